"""The one error tree of subswitch: every exception the three packages raise.

:class:`SubswitchError` is the root. Below it are exactly two families, so a retry
decision is one ``isinstance`` anywhere:

* :class:`TransientError`: the same thing may work later (a broker, store or upstream
  that could not be reached, a timeout, 429/5xx);
* :class:`PermanentError`: it never will as it is (bad input, bad configuration, an
  upstream refusal).

Errors of the libraries underneath (kombu, amqp, redis, httpx) are mapped into this
tree once, where subswitch calls them: the publisher, the worker's sinks, the store
and the upstream client. Above those boundaries nothing catches a library's error.

The upstream client's errors (``worker.upstream.errors``), ``InvalidCommand`` (the
contract's) and ``EmbeddedRedisError`` live next to the code that raises them and derive
from the classes here.
"""

from __future__ import annotations

from typing import Final

from pydantic import ValidationError

#: The prefix of every setting's environment variable.
ENV_PREFIX: Final = "SUBSWITCH_"


class SubswitchError(Exception):
    """Root of every error subswitch raises; ``str()`` is one line without secrets."""


class TransientError(SubswitchError):
    """A failure a later attempt may overcome: retry (with backoff) or try again later."""


class PermanentError(SubswitchError):
    """A failure no retry fixes: the input, the configuration or a refusal must change."""


# --- transient ------------------------------------------------------------------------


class UnavailableError(TransientError):
    """A service subswitch needs (broker, store, embedded Redis) could not be reached or
    failed an operation."""


class BrokerError(UnavailableError):
    """The broker could not be reached or refused an operation (one line, no secrets)."""


class PublishError(BrokerError):
    """A message could not be handed to the broker.

    It may or may not have been enqueued if the connection broke after the broker took
    it, so re-sending the same command (same ``command_id``) is the safe recovery: the
    worker applies it once.
    """


class StoreError(UnavailableError):
    """The store could not be reached or answered unexpectedly; retry later."""


# --- permanent ------------------------------------------------------------------------


class InvalidInput(PermanentError, ValueError):
    """Input refused before anything was done: a command, a file, an option's value."""


class ConfigurationError(PermanentError, ValueError):
    """Settings (or a file they name) that cannot make a working process.

    ``variable`` is the environment variable to fix (``SUBSWITCH_MAX_ATTEMPTS``) when
    one is to blame; ``str()`` then starts with it.
    """

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(f"{variable}: {message}" if variable else message)
        self.variable = variable


def settings_error(exc: ValidationError) -> ConfigurationError:
    """The :class:`ConfigurationError` for settings that failed validation, naming the
    environment variables: ``SUBSWITCH_MAX_ATTEMPTS: Input should be a valid integer``,
    not ``max_attempts``."""
    named = [
        (f"{ENV_PREFIX}{'_'.join(str(part) for part in error['loc']).upper()}", error["msg"])
        for error in exc.errors(include_url=False)
    ]
    if not named:
        return ConfigurationError(" ".join(str(exc).split()))
    (variable, message), *others = named
    message += "".join(f"; {name}: {text}" for name, text in others)
    return ConfigurationError(message, variable=variable)


class ArchiveError(UnavailableError):
    """The audit archive's database could not be reached or failed an operation (one
    line, its password masked); retry later."""
