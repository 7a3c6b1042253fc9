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


# The password of a URL's user info, a bearer token, a secret query parameter.
_SECRETS_IN_TEXT: Final = re.compile(
    r"(?P<url>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"
    r"|(?P<bearer>\b[Bb]earer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(?P<param>[?&](?:password|pass|passwd|secret|token)=)[^&\s\"']+",
    re.IGNORECASE,
)


#: What every match of ``_SECRETS_IN_TEXT`` contains (any case of "bearer").
#: What a line holds if it may hold a secret; one C-level scan (a loop of ``in`` tests
#: cost a per-command log line more than formatting it).
_SECRET_HINTS: Final = re.compile(r"://|\?|&|earer|EARER")


def _mask(match: re.Match[str]) -> str:
    if match["url"]:
        return f"{match['url']}{MASK}@"
    return f"{match['bearer'] or match['param']}{MASK}"


def redact_text(text: str) -> str:
    """``text`` with every password in a URL, bearer token and secret query value as ``***``.

    The last line of defence of log output: a line should not carry a secret in the
    first place (messages use :func:`redact_url`), this catches one that slipped in.
    """
    # A hint scan is ~100x cheaper than the pattern: most lines have none of these.
    if _SECRET_HINTS.search(text) is None:
        return text
    return _SECRETS_IN_TEXT.sub(_mask, text)
