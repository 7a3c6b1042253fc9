"""The contract against hostile input: invisible characters, huge and forged field names."""

from __future__ import annotations

from typing import Any

import pytest

from subswitch.contract import InvalidCommand, parse_command
from subswitch.text import MAX_REASON_BYTES

VALID: dict[str, Any] = {
    "type": "ChangeBlockStatus",
    "schema_version": 1,
    "command_id": "c-1",
    "issued_at": "2026-11-22T09:00:00Z",
    "source": "tests",
    "org_id": "telco",
    "subscription_id": 7,
    "block_id": 1,
    "active": True,
}
HIDDEN = {
    "C1 control": "\x9b",
    "next line": "\x85",
    "right-to-left override": "\u202e",
    "left-to-right embedding": "\u202a",
    "first strong isolate": "\u2068",
    "pop directional isolate": "\u2069",
    "zero width space": "\u200b",
    "right-to-left mark": "\u200f",
    "line separator": "\u2028",
    "byte order mark": "\ufeff",
    "arabic letter mark": "\u061c",
}


@pytest.mark.parametrize("field", ["reason", "source", "correlation_id"])
@pytest.mark.parametrize("char", HIDDEN.values(), ids=list(HIDDEN))
def test_invisible_and_bidi_characters_are_refused(field: str, char: str) -> None:
    # Given a command whose field hides a character
    data = {**VALID, field: f"ok{char}evil"}
    # When it is parsed / Then it is refused, naming the field and the code point
    with pytest.raises(InvalidCommand) as refused:
        parse_command(data)
    message = str(refused.value)
    assert message.startswith(f"{field}: must not contain control, bidi or invisible")
    assert f"U+{ord(char):04X} at 2" in message


def test_ordinary_unicode_is_accepted() -> None:
    # Given accents, CJK and emoji in the free-text fields / Then the command is valid
    command = parse_command({**VALID, "reason": "vol déclaré 東京 📱", "source": "fraude-é"})
    assert command.source == "fraude-é"


def test_thousands_of_unknown_fields_give_one_short_line() -> None:
    # Given a command with 5,000 unknown fields whose names carry CR/LF
    data = {**VALID, **{f"x{n}\r\nX-Evil: {n}": n for n in range(5000)}}
    # When it is parsed
    with pytest.raises(InvalidCommand) as refused:
        parse_command(data)
    # Then the reason is one line of at most 1 KiB, escaped, counting what it left out
    reason = str(refused.value)
    assert len(reason.encode()) <= MAX_REASON_BYTES
    assert "\r" not in reason and "\n" not in reason
    assert "x0\\r\\nX-Evil: 0: Extra inputs are not permitted" in reason
    assert reason.endswith("more")
    assert refused.value.command_id == "c-1"
