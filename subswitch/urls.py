"""Where the broker and the store are, decided once (contract §2.7), and URLs fit to show.

A fleet sets both ``SUBSWITCH_BROKER_URL`` and ``SUBSWITCH_STORE_URL``; one machine
sets neither and gets the embedded Redis for both. One without the other would give
each host a private embedded store (no idempotency, ordering or lock shared across
machines), so it is refused, naming the missing variable. A producer that only
enqueues needs the broker alone.

Either URL may name a Redis behind Sentinel: ``redis+sentinel://[[user]:password@]
host:26379[,host2:26379...]/master_name[/db]``: the Sentinels to ask (port 26379 if
left out), the name they monitor the master by, the database (0 if left out). The
password is the master's (and its replicas'); the Sentinels are asked without one.
:func:`parse_sentinel_url` reads it; :func:`subswitch.redis_client.redis_client`
(the store) and :func:`subswitch.broker.kombu_broker` (the broker) connect through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NoReturn
from urllib.parse import unquote, urlsplit

from subswitch.embedded import ensure_embedded_redis
from subswitch.errors import ConfigurationError
from subswitch.redact import redact_url
from subswitch.settings import Settings

BROKER_VARIABLE: Final = "SUBSWITCH_BROKER_URL"
STORE_VARIABLE: Final = "SUBSWITCH_STORE_URL"
#: The scheme of a Redis found through Sentinel, for the store and the broker alike.
SENTINEL_SCHEME: Final = "redis+sentinel"
SENTINEL_PORT: Final = 26379
_SENTINEL_FORM: Final = (
    "use redis+sentinel://[:password@]host:26379[,host2:26379...]/master_name[/db]"
)


class MissingUrlError(ConfigurationError):
    """Only one of the broker and store URLs is set; ``str()`` names the missing variable."""

    def __init__(self, missing: str, present: str) -> None:
        super().__init__(
            f"{missing} is not set but {present} is: set both (a fleet) or neither "
            "(the embedded broker and store on this machine)"
        )
        self.variable = self.missing = missing


@dataclass(frozen=True)
class Endpoints:
    """The broker and store URLs a worker (or a command that reads the store) uses."""

    broker_url: str
    store_url: str
    #: Whether resolving started the embedded Redis (rather than finding it running).
    started_embedded: bool = False

    def __repr__(self) -> str:
        broker, store = redact_url(self.broker_url), redact_url(self.store_url)
        return f"Endpoints(broker_url={broker!r}, store_url={store!r})"


def resolve_endpoints(settings: Settings) -> Endpoints:
    """Both configured URLs, or the embedded Redis (started if needed) for both.

    Raises:
        MissingUrlError: one of the two is set without the other.
        ConfigurationError: a malformed ``redis+sentinel://`` URL.
    """
    _refuse_half(settings)
    if settings.broker_url and settings.store_url:
        _check_sentinel(settings.broker_url, BROKER_VARIABLE)
        _check_sentinel(settings.store_url, STORE_VARIABLE)
        return Endpoints(settings.broker_url, settings.store_url)
    embedded = ensure_embedded_redis(settings.data_dir)
    return Endpoints(embedded.broker_url, embedded.store_url, started_embedded=embedded.started)


def resolve_broker_url(settings: Settings) -> str:
    """The broker a producer enqueues to: the configured one, or the embedded one.

    A store URL without a broker URL means a fleet whose broker this producer does
    not know: enqueueing into a private embedded broker would reach no worker.

    Raises:
        MissingUrlError: the store URL is set and the broker URL is not.
    """
    if settings.broker_url:
        return _check_sentinel(settings.broker_url, BROKER_VARIABLE)
    _refuse_half(settings)
    return ensure_embedded_redis(settings.data_dir).broker_url


def resolve_store_url(settings: Settings) -> str:
    """The store a command that reads it (``status``, ``retry``) uses: the configured
    one, or the embedded one when neither URL is set.

    A broker URL without a store URL means a fleet whose store this command does not
    know: a private embedded store would know none of its commands.

    Raises:
        MissingUrlError: the broker URL is set and the store URL is not.
    """
    if settings.store_url:
        return _check_sentinel(settings.store_url, STORE_VARIABLE)
    _refuse_half(settings)
    return ensure_embedded_redis(settings.data_dir).store_url


def _check_sentinel(url: str, variable: str) -> str:
    """``url``, once read if it is a Sentinel URL: a malformed one fails here, in one
    line, before anything connects."""
    if is_sentinel_url(url):
        parse_sentinel_url(url, variable=variable)
    return url


def _refuse_half(settings: Settings) -> None:
    if settings.broker_url and not settings.store_url:
        raise MissingUrlError(STORE_VARIABLE, BROKER_VARIABLE)
    if settings.store_url and not settings.broker_url:
        raise MissingUrlError(BROKER_VARIABLE, STORE_VARIABLE)


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL, read: where the Sentinels are and what to ask them."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        password = "***" if self.password else None
        return (
            f"SentinelUrl(sentinels={self.sentinels!r}, master={self.master!r}, "
            f"db={self.db}, username={self.username!r}, password={password!r})"
        )


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a Redis found through Sentinel."""
    return url.partition("://")[0].lower() == SENTINEL_SCHEME


def parse_sentinel_url(url: str, *, variable: str) -> SentinelUrl:
    """Read a ``redis+sentinel://`` URL.

    Raises:
        ConfigurationError: a malformed URL, in one line naming ``variable`` and what
            is wrong (never the URL itself: it may hold a password).
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != SENTINEL_SCHEME:
        _bad_sentinel(f"the scheme is {parts.scheme!r}, not {SENTINEL_SCHEME!r}", variable)
    if parts.query or parts.fragment:
        _bad_sentinel("it takes no query or fragment", variable)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    segments = [unquote(segment) for segment in parts.path.split("/")[1:]]
    if segments and segments[-1] == "":
        segments.pop()
    if not segments or not segments[0]:
        _bad_sentinel("the master name is missing", variable)
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        _bad_sentinel("after the master name only a database number may follow", variable)
    return SentinelUrl(
        sentinels=tuple(_sentinel_host(host, variable) for host in hosts.split(",")),
        master=segments[0],
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=unquote(user) or None,
        password=unquote(password) or None,
    )


def _sentinel_host(host: str, variable: str) -> tuple[str, int]:
    if host.startswith("["):  # an IPv6 address
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest or str(SENTINEL_PORT)
    else:
        name, colon, port = host.partition(":")
        port = port if colon else str(SENTINEL_PORT)
    if not name:
        _bad_sentinel("a Sentinel host is empty", variable)
    if not port.isdigit() or not 0 < int(port) < 65536:
        _bad_sentinel("a Sentinel port is not a port number", variable)
    return name, int(port)


def _bad_sentinel(problem: str, variable: str) -> NoReturn:
    raise ConfigurationError(
        f"malformed Sentinel URL: {problem}; {_SENTINEL_FORM}", variable=variable
    )
