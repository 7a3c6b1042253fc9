"""safe_line: one bounded line out of whatever a message holds."""

from __future__ import annotations

import pytest

from subswitch.text import MAX_REASON_BYTES, first_unsafe, safe_line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name\r\nX-Injected: 1", "name\\r\\nX-Injected: 1"),
        ("tab\there", "tab\\there"),
        ("bell\x07", "bell\\x07"),
        ("c1\x85next", "c1\\x85next"),
        ("abc\u202edcba", "abc\\u202edcba"),
        ("iso\u2066late\u2069", "iso\\u2066late\\u2069"),
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("line\u2028sep", "line\\u2028sep"),
        ("Grüße, 東京", "Grüße, 東京"),
    ],
)
def test_unsafe_characters_are_escaped_and_the_rest_kept(text: str, expected: str) -> None:
    # Given text from a message / When it is made safe / Then it reads as expected
    assert safe_line(text) == expected


def test_a_long_text_is_cut_to_the_byte_limit_with_a_mark() -> None:
    # Given 290 KB of text of multi-byte characters
    text = "é" * 150_000
    # When it is made safe
    line = safe_line(text)
    # Then it holds at most 1 KiB of UTF-8, ends with an ellipsis, and no half character
    assert len(line.encode()) <= MAX_REASON_BYTES
    assert line.endswith("…")
    assert set(line[:-1]) == {"é"}


def test_escapes_count_towards_the_limit() -> None:
    # Given text that grows when escaped
    line = safe_line("\n" * 2000, limit=100)
    # Then the escaped form is cut, not the raw one
    assert len(line.encode()) <= 100
    assert line.startswith("\\n\\n")


def test_first_unsafe_names_the_code_point_and_position() -> None:
    # Given text with a right-to-left override at index 3 / Then it is named
    assert first_unsafe("abc\u202edef") == "U+202E at 3"
    assert first_unsafe("plain") is None
