"""Where the broker and the store are, decided once (contract §2.7), and URLs fit to show.

A fleet sets both ``SUBSWITCH_BROKER_URL`` and ``SUBSWITCH_STORE_URL``; one machine
sets neither and gets the embedded Redis for both. One without the other would give
each host a private embedded store (no idempotency, ordering or lock shared across
machines), so it is refused, naming the missing variable. A producer that only
enqueues needs the broker alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from subswitch.embedded import ensure_embedded_redis
from subswitch.errors import ConfigurationError
from subswitch.redact import redact_url
from subswitch.settings import Settings

BROKER_VARIABLE: Final = "SUBSWITCH_BROKER_URL"
STORE_VARIABLE: Final = "SUBSWITCH_STORE_URL"


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
    """
    _refuse_half(settings)
    if settings.broker_url and settings.store_url:
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
        return settings.broker_url
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
        return settings.store_url
    _refuse_half(settings)
    return ensure_embedded_redis(settings.data_dir).store_url


def _refuse_half(settings: Settings) -> None:
    if settings.broker_url and not settings.store_url:
        raise MissingUrlError(STORE_VARIABLE, BROKER_VARIABLE)
    if settings.store_url and not settings.broker_url:
        raise MissingUrlError(BROKER_VARIABLE, STORE_VARIABLE)
