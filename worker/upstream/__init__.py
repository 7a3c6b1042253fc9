"""The MasStack customers API v2 client and its authentication.

Start with :func:`from_settings` (or :class:`MasStackClient` directly); catch
:class:`UpstreamTransientError` to retry and :class:`UpstreamPermanentError` to give up
(``TransientError`` and ``PermanentError`` are their older names).
"""

from subswitch.errors import ConfigurationError
from worker.upstream.auth import (
    NoAuth,
    ServiceAccount,
    ServiceAccountTokenProvider,
    StaticToken,
    TokenProvider,
    token_provider_from_settings,
)
from worker.upstream.client import MasStackClient
from worker.upstream.errors import (
    AuthenticationError,
    InvalidRequestError,
    MalformedResponseError,
    PermanentError,
    TransientError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamPermanentError,
    UpstreamTimeout,
    UpstreamTransientError,
    UpstreamUnavailable,
    parse_retry_after,
)
from worker.upstream.factory import from_settings, timeout_from_settings
from worker.upstream.models import (
    Block,
    BlockStatus,
    ErrorMessage,
    Service,
    ServiceQuery,
    ServiceStatus,
    SubscriptionBlocks,
    SubscriptionServices,
)

__all__ = [
    "AuthenticationError",
    "Block",
    "BlockStatus",
    "ConfigurationError",
    "ErrorMessage",
    "InvalidRequestError",
    "MalformedResponseError",
    "MasStackClient",
    "NoAuth",
    "PermanentError",
    "Service",
    "ServiceAccount",
    "ServiceAccountTokenProvider",
    "ServiceQuery",
    "ServiceStatus",
    "StaticToken",
    "SubscriptionBlocks",
    "SubscriptionServices",
    "TokenProvider",
    "TransientError",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamPermanentError",
    "UpstreamTimeout",
    "UpstreamTransientError",
    "UpstreamUnavailable",
    "from_settings",
    "parse_retry_after",
    "timeout_from_settings",
    "token_provider_from_settings",
]
