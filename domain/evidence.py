"""Evidence files: photos and documents a worker uploads to a session and attaches to checks,
stored by the service under their sha256 (CONTRACT.md, "Evidence files", v1.2).

What a file is, is decided here from its first bytes, never from what the client says it
is; how large it may be is counted as it arrives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from domain.errors import DomainError

MAX_FILES_PER_CHECK = 10

# The types taken, by their first bytes (HEIC: an ISO-BMFF `ftyp` box naming a HEIC brand).
JPEG, PNG, WEBP, HEIC, PDF = "image/jpeg", "image/png", "image/webp", "image/heic", \
    "application/pdf"
TYPES = (JPEG, PNG, WEBP, HEIC, PDF)
HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
SNIFF_BYTES = 64  # enough for every signature above, the `ftyp` box's first brands included


class UnsupportedType(DomainError):
    """The file is none of the types taken (HTTP 415)."""

    code = "unsupported-media-type"


class TooLarge(DomainError):
    """The file is larger than the service takes (HTTP 413)."""

    code = "too-large"


class Incomplete(DomainError):
    """The file stopped arriving before its end (HTTP 408)."""

    code = "incomplete-upload"


def sniff(head: bytes) -> str | None:
    """The type of a file from its first bytes (at least SNIFF_BYTES of them, unless the
    file is shorter), or None when it is none of TYPES."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head.startswith(b"%PDF-"):
        return PDF
    if head[4:8] == b"ftyp":
        box = int.from_bytes(head[:4], "big")
        brands = [head[i:i + 4] for i in range(8, min(box, len(head)) - 3, 4)
                  if i != 12]  # major brand, (minor version), compatible brands
        if brands and (brands[0] in HEIC_BRANDS or
                       (brands[0] in (b"mif1", b"msf1") and HEIC_BRANDS & set(brands[1:]))):
            return HEIC
    return None


def is_image(content_type: str) -> bool:
    return content_type.startswith("image/")


class Inspection:
    """A file as it arrives, chunk by chunk: its type once its first bytes are in (refused
    then, not after the rest), and its size, refused as soon as it passes `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.content_type: str | None = None
        self._head = b""

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(f"the file is larger than {self.limit} bytes", limit=self.limit)
        if self.content_type is None and len(self._head) < SNIFF_BYTES:
            self._head += chunk[:SNIFF_BYTES - len(self._head)]
            if len(self._head) >= SNIFF_BYTES:
                self._decide()

    def finish(self) -> str:
        """The whole file is in: its type (a file shorter than SNIFF_BYTES is judged on what
        there is)."""
        if self.content_type is None:
            self._decide()
        assert self.content_type is not None
        return self.content_type

    def _decide(self) -> None:
        if not self._head:
            raise UnsupportedType("the file is empty")
        found = sniff(self._head)
        if found is None:
            raise UnsupportedType("the file is not a JPEG, PNG, WebP, HEIC or PDF file (its "
                                  "type is read from its first bytes, not from its name or "
                                  "Content-Type)", accepted=list(TYPES))
        self.content_type = found


@dataclass(frozen=True)
class EvidenceFile:
    """A file as a check records it (and the session's answer lists it)."""

    id: UUID
    sha256: str
    content_type: str
    bytes: int
    filename: str | None = None


@dataclass(frozen=True, kw_only=True)
class Evidence(EvidenceFile):
    """An upload to a session, attached to a check or not (yet)."""

    session_id: UUID
    uploaded_at: datetime
    uploaded_by: UUID
    check_id: UUID | None = None
    attached_at: datetime | None = None

    def file(self) -> EvidenceFile:
        return EvidenceFile(id=self.id, sha256=self.sha256, content_type=self.content_type,
                            bytes=self.bytes, filename=self.filename)
