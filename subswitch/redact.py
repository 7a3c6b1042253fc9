"""Secrets out of what is shown: URLs with their password masked, text scrubbed of it."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK: Final = "***"
_WHITESPACE: Final = re.compile(r"\s+")
# Query parameters redis-py and kombu read a password from.
_SECRET_PARAMS: Final = frozenset({"password", "pass", "passwd", "secret", "token"})


def redact_url(url: str) -> str:
    """``url`` with its password (in the user info or the query), if any, as ``***``."""
    parts = original = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if at and colon and password:
        parts = parts._replace(netloc=f"{user}:{MASK}@{hostport}")
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        masked = [(key, MASK if key.lower() in _SECRET_PARAMS else value) for key, value in pairs]
        if masked != pairs:
            parts = parts._replace(query=urlencode(masked, safe="*"))
    if parts == original:
        return url
    rebuilt = urlunsplit(parts)
    if "://" in url and "://" not in rebuilt:  # urlunsplit drops the "//" of an empty host
        scheme, _, rest = rebuilt.partition(":")
        rebuilt = f"{scheme}://{rest}"
    return rebuilt


def scrub(text: str, url: str) -> str:
    """``text`` on one line, with ``url``'s password (if any) replaced by ``***``."""
    password = urlsplit(url).password
    if password:
        for spelling in {password, unquote(password)}:
            text = text.replace(spelling, MASK)
    return _WHITESPACE.sub(" ", text).strip()
