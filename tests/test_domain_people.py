"""A person's name as the directory shows it and searches it (domain/people.py): pure, no I/O."""

from __future__ import annotations

from domain.people import NAME_MAX, SEARCH_KEY_MAX, display_name, search_key


def test_the_name_claim_comes_first_then_preferred_username_then_none() -> None:
    assert display_name("Ada Lovelace", "ada") == "Ada Lovelace"
    assert display_name(None, "ada") == "ada"
    assert display_name(None, None) is None


def test_a_claim_that_is_not_a_string_with_something_to_show_is_no_name() -> None:
    for not_a_name in (42, 4.2, True, ["Ada"], {"given": "Ada"}, "", "   ", "\x00\x07",
                       "\u202e\u200b"):
        assert display_name(not_a_name) is None, repr(not_a_name)
        assert display_name(not_a_name, "ada") == "ada", repr(not_a_name)


def test_control_characters_are_spaces_and_invisible_ones_are_dropped() -> None:
    assert display_name("Ada\nLovelace") == "Ada Lovelace"
    assert display_name("  Ada \t\r\n Lovelace\x00 ") == "Ada Lovelace"
    # a right-to-left override would make "Ada" read "adA" to the supervisor
    assert display_name("\u202eAda\u202c") == "Ada"
    assert display_name("Ada\ud800") == "Ada"  # a lone surrogate: no database stores it
    # joiners are part of scripts and emoji: kept
    assert display_name("\u0915\u094d\u200d\u0937") == "\u0915\u094d\u200d\u0937"


def test_an_absurdly_long_name_is_cut_not_refused() -> None:
    name = display_name("A" * 10_000)
    assert name == "A" * NAME_MAX
    assert display_name("Ada" + " " * NAME_MAX + "Lovelace") == "Ada Lovelace"
    # cut where a space falls: no trailing space
    assert display_name("x" * (NAME_MAX - 1) + " tail") == "x" * (NAME_MAX - 1)


def test_names_are_composed_one_way_so_that_equal_names_are_equal() -> None:
    assert display_name("Zoe\u0308") == display_name("Zo\u00eb") == "Zo\u00eb"


def test_a_search_key_ignores_case_in_every_script() -> None:
    assert search_key("ADA Lovelace") == search_key("ada lovelace")
    assert search_key("STRASSE") == search_key("Straße")
    assert search_key("ΣΊΣΥΦΟΣ") == search_key("σίσυφος")
    assert search_key("  Ada \n Lovelace ") == "ada lovelace"


def test_a_search_key_fits_its_column_whatever_the_name() -> None:
    longest = display_name("\u0390" * 10_000)  # each case-folds to three characters
    assert longest is not None and len(search_key(longest)) <= SEARCH_KEY_MAX
