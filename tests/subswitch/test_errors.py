"""The one error tree: every exception class of the three packages hangs under
``SubswitchError``, in exactly one of its two families."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import pytest
from pydantic import ValidationError

import producers
import subswitch
import worker
from subswitch import errors
from subswitch.broker import celery_config, check_broker_url
from subswitch.contract import InvalidCommand, parse_command
from subswitch.embedded import EmbeddedRedisError
from subswitch.settings import Settings
from worker.upstream import errors as upstream

PACKAGES = (subswitch, worker, producers)
#: Modules that are entry points: importing them runs something.
ENTRY_POINTS = frozenset({"subswitch.__main__", "subswitch.simulator.__main__", "worker.app"})


def _modules() -> Iterator[ModuleType]:
    for package in PACKAGES:
        yield package
        prefix = package.__name__ + "."
        for info in pkgutil.walk_packages(package.__path__, prefix):
            if info.name not in ENTRY_POINTS:
                yield importlib.import_module(info.name)


def _first_party(name: str) -> bool:
    return name.split(".", 1)[0] in {package.__name__ for package in PACKAGES}


def exception_classes() -> set[type[BaseException]]:
    """Every ``BaseException`` subclass defined (not just imported) in the packages."""
    found: set[type[BaseException]] = set()
    for module in _modules():
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and _first_party(value.__module__):
                found.add(value)
    return found


def test_the_walk_finds_the_exceptions_of_all_three_packages() -> None:
    # When every module is imported and searched
    found = {f"{cls.__module__}.{cls.__qualname__}" for cls in exception_classes()}
    # Then classes of each package are there (a broken walk would find none)
    assert {
        "subswitch.errors.SubswitchError",
        "subswitch.contract.InvalidCommand",
        "subswitch.embedded.EmbeddedRedisError",
        "subswitch.simulator.errors.ApiError",
        "worker.upstream.errors.UpstreamTimeout",
        "producers.errors.InvalidCommandError",
        "producers.batch.BatchFileError",
    } <= found


def test_every_exception_class_is_in_the_tree_in_exactly_one_family() -> None:
    # Given every exception class the three packages define
    # (the root, its two families, and the upstream's base, which spans both families)
    roots = {
        errors.SubswitchError,
        errors.TransientError,
        errors.PermanentError,
        upstream.UpstreamError,
    }
    # When each is placed in the tree
    outside = [cls for cls in exception_classes() if not issubclass(cls, errors.SubswitchError)]
    both_or_neither = [
        cls
        for cls in exception_classes() - roots
        if issubclass(cls, errors.TransientError) == issubclass(cls, errors.PermanentError)
    ]
    # Then none is outside, and each is transient or permanent, never both or neither
    assert outside == []
    assert both_or_neither == []


@pytest.mark.parametrize(
    ("error", "family"),
    [
        (errors.StoreError("x"), errors.TransientError),
        (errors.PublishError("x"), errors.TransientError),
        (EmbeddedRedisError("x"), errors.TransientError),
        (upstream.UpstreamTimeout("x"), errors.TransientError),
        (upstream.UpstreamUnavailable("x", status=503), errors.TransientError),
        (upstream.AuthenticationError("x", status=401), errors.PermanentError),
        (upstream.InvalidRequestError("x"), errors.PermanentError),
        (errors.ConfigurationError("x"), errors.PermanentError),
        (InvalidCommand("x"), errors.PermanentError),
    ],
)
def test_a_retry_decision_is_one_isinstance(error: Exception, family: type[Exception]) -> None:
    # Given an error raised anywhere, then its family alone says whether to retry
    assert isinstance(error, family)
    assert isinstance(error, errors.SubswitchError)


def test_the_embedded_redis_is_both_broker_and_store() -> None:
    # Given the embedded Redis failing, then the SDK (broker) and worker (store) catch it
    assert issubclass(EmbeddedRedisError, errors.BrokerError)
    assert issubclass(EmbeddedRedisError, errors.StoreError)


def test_the_upstream_families_keep_their_older_names() -> None:
    # The executor's imports name the upstream families TransientError / PermanentError
    assert upstream.TransientError is upstream.UpstreamTransientError
    assert upstream.PermanentError is upstream.UpstreamPermanentError
    assert issubclass(upstream.UpstreamTransientError, errors.TransientError)
    assert not issubclass(upstream.UpstreamTransientError, errors.PermanentError)


def test_contract_and_configuration_errors_stay_value_errors() -> None:
    # When a malformed command is parsed
    with pytest.raises(ValueError, match="not JSON") as caught:
        parse_command("{")
    # Then it is both a ValueError and a permanent error of the tree
    assert isinstance(caught.value, errors.PermanentError)
    assert issubclass(errors.ConfigurationError, ValueError)


def test_a_configuration_error_names_its_variable() -> None:
    # When a configuration error is raised for a variable
    error = errors.ConfigurationError("Input should be a valid integer", variable="SUBSWITCH_X")
    # Then the variable leads its one line and is kept for callers
    assert str(error) == "SUBSWITCH_X: Input should be a valid integer"
    assert error.variable == "SUBSWITCH_X"


@pytest.mark.parametrize("url", ["nonsense://x", "nonsense://user:s3cret@host/0"])
def test_an_unknown_broker_scheme_is_a_configuration_error(url: str) -> None:
    # When the broker settings are built for a URL kombu has no transport for
    with pytest.raises(errors.ConfigurationError) as caught:
        celery_config(broker_url=url, visibility_timeout=300, queue_type="quorum", delivery_limit=5)
    # Then one line names the variable and the scheme, never the password
    assert caught.value.variable == "SUBSWITCH_BROKER_URL"
    assert "unknown broker scheme 'nonsense'" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "redis+socket:///tmp/r.sock", "amqp://h//"])
def test_known_broker_schemes_pass(url: str) -> None:
    # Given a supported scheme, then the URL passes the check unchanged
    assert check_broker_url(url) == url


def test_invalid_settings_name_each_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two bad settings in the environment
    monkeypatch.setenv("SUBSWITCH_MAX_ATTEMPTS", "many")
    monkeypatch.setenv("SUBSWITCH_RABBITMQ_QUEUE_TYPE", "stream")
    # When the settings are read and the failure mapped
    with pytest.raises(ValidationError) as caught:
        Settings()
    error = errors.settings_error(caught.value)
    # Then one line names both variables, the first as the one to fix
    assert error.variable == "SUBSWITCH_MAX_ATTEMPTS"
    assert str(error).startswith("SUBSWITCH_MAX_ATTEMPTS: Input should be a valid integer")
    assert "; SUBSWITCH_RABBITMQ_QUEUE_TYPE: Input should be 'quorum' or 'classic'" in str(error)
    assert "\n" not in str(error) and "max_attempts" not in str(error)
