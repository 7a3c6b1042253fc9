"""The MasStack customers API v2 client and its authentication.

Start with :func:`from_settings` (or :class:`MasStackClient` directly); catch
:class:`TransientError` to retry and :class:`PermanentError` to give up.
"""

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
    ConfigurationError,
    InvalidRequestError,
    MalformedResponseError,
    PermanentError,
    TransientError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
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
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "from_settings",
    "parse_retry_after",
    "timeout_from_settings",
    "token_provider_from_settings",
]
