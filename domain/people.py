"""The directory of people (CONTRACT.md v1.2, "People"): who the service has seen, by the name
their token gave, so that supervisors read names and not only ids.

A name comes from outside (an identity provider's claim, a development token) and is shown to
other people: it is made fit to show once, here (`display_name`), and searched by one key
(`search_key`)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

NAME_MAX = 200  # characters kept of a longer name (cut, not refused: it is still theirs)
# casefold() turns one character into at most three ("ß" -> "ss", "ΐ" -> three)
SEARCH_KEY_MAX = 3 * NAME_MAX
# Joiners stay: scripts and emoji need them. Other format characters go: bidirectional
# overrides would make one name read as another.
_KEPT_FORMAT = {"\u200c", "\u200d"}
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Person:
    id: UUID
    name: str | None
    role: str
    first_seen: datetime
    last_seen: datetime


def display_name(*candidates: object) -> str | None:
    """The first candidate that is a string with something to show (the token's `name`, else
    its `preferred_username`), made fit to show: control characters are spaces, other
    invisible ones (format, surrogates, private use, unassigned) are dropped, runs of
    whitespace are one space, NFC, cut to NAME_MAX characters. Anything else (a number, a
    list, an empty or blank string) is no name."""
    for candidate in candidates:
        if isinstance(candidate, str):
            name = _clean(candidate)[:NAME_MAX].rstrip()
            if name:
                return name
    return None


def search_key(text: str) -> str:
    """What a name is searched by, and what a search is made into: the text as a name is
    shown, case-folded (so `ADA`, `ada` and `Ada` are one, and `Straße` is `STRASSE`)."""
    return _clean(text).casefold()


def _clean(text: str) -> str:
    kept = []
    for ch in unicodedata.normalize("NFC", text):
        category = unicodedata.category(ch)
        if category == "Cc":
            kept.append(" ")
        elif category[0] != "C" or ch in _KEPT_FORMAT:
            kept.append(ch)
    return _SPACES.sub(" ", "".join(kept)).strip()
