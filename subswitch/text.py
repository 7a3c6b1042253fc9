"""Text built from message content, made safe for one log line or one broker header.

Anyone with broker access chooses what a message holds: field names with CR/LF, bidi
overrides that reorder what an operator reads, or thousands of unknown fields. Every
reason and log line that quotes message content goes through :func:`safe_line`.
"""

from __future__ import annotations

import re
from typing import Final

#: The most a reason (dead-letter header, event ``error.message``, log line) may hold.
MAX_REASON_BYTES: Final = 1024

#: Characters that break a line or change how a line reads without being visible:
#: C0 and C1 controls, DEL, the Arabic letter mark, zero-width and directional marks,
#: line and paragraph separators, bidi embeddings, overrides and isolates, word joiner
#: and invisible operators, the BOM, interlinear annotation controls.
#: A regex character class body, written with escapes so that the contract's JSON
#: Schema (which carries it in ``pattern``) stays readable.
UNSAFE_CHARACTERS: Final = (
    r"\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb"
)
_UNSAFE: Final = re.compile(f"[{UNSAFE_CHARACTERS}]")
_SHORT_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ELLIPSIS: Final = "…"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def safe_line(text: str, *, limit: int = MAX_REASON_BYTES) -> str:
    """``text`` on one line, unsafe characters escaped (``\\n``, ``\\u202e``), cut so
    that its UTF-8 encoding holds at most ``limit`` bytes (an ellipsis marks a cut)."""
    escaped = _UNSAFE.sub(_escape, text)
    encoded = escaped.encode()
    if len(encoded) <= limit:
        return escaped
    room = limit - len(_ELLIPSIS.encode())
    # errors="ignore" drops a multi-byte character cut in half at the end.
    return encoded[:room].decode(errors="ignore") + _ELLIPSIS


def first_unsafe(text: str) -> str | None:
    """The first unsafe character of ``text``, named like ``U+202E at 4``, or ``None``."""
    match = _UNSAFE.search(text)
    return None if match is None else f"U+{ord(match.group()):04X} at {match.start()}"
