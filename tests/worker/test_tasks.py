"""The task shells: trouble of the tree is retried quietly, a bug loudly, and neither
acknowledges a command that was not finished."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from celery import Celery
from celery.exceptions import Retry

from subswitch.contract import APPLY_TASK
from subswitch.errors import PublishError, StoreError
from worker import tasks
from worker.deliveries import DeliveryCounter
from worker.store import LuaScripts


class Retried(Exception):
    """What the fake task's ``retry`` raises: the message goes back to the broker."""


class FakeTask:
    """Just what ``run_apply`` touches of a bound Celery task."""

    def __init__(self) -> None:
        # Ten earlier retries: the backoff is whole seconds, so nothing waits in-thread.
        self.request = SimpleNamespace(id="cmd-1", retries=10)
        self.app = object()
        self.countdowns: list[int] = []

    def retry(self, *, countdown: int) -> Retried:
        self.countdowns.append(countdown)
        return Retried()


class FailingExecutor:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def handle(self, *_: Any, **__: Any) -> Any:
        raise self.error


def _run_with(error: Exception) -> FakeTask:
    executor = FailingExecutor(error)
    counter = DeliveryCounter(scripts=LuaScripts(client=fakeredis.FakeRedis()), limit=5)
    task = FakeTask()
    with pytest.raises(Retried):
        tasks.run_apply(
            task,  # type: ignore[arg-type]
            ({"command_id": "cmd-1"},),
            {},
            executor=lambda: executor,  # type: ignore[arg-type, return-value]
            deliveries=lambda: counter,
        )
    return task


@pytest.mark.parametrize("error", [StoreError("store unavailable: refused"), PublishError("x")])
def test_transient_trouble_is_retried_with_one_warning_line(
    caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    # Given a store or broker out of reach while a command is handled
    # When the delivery runs
    with caplog.at_level(logging.WARNING, logger=tasks.__name__):
        task = _run_with(error)
    # Then the message goes back with a backoff, logged as one warning without a traceback
    assert len(task.countdowns) == 1 and task.countdowns[0] >= 1
    [record] = caplog.records
    assert (record.levelno, record.exc_info) == (logging.WARNING, None)
    assert str(error) in record.getMessage()


def test_a_bug_is_retried_too_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a bug (an error outside the tree) while a command is handled
    # When the delivery runs
    with caplog.at_level(logging.WARNING, logger=tasks.__name__):
        task = _run_with(KeyError("oops"))
    # Then the command is not acknowledged either, and the log shows the traceback
    assert len(task.countdowns) == 1
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)


def test_each_app_runs_its_own_executor_however_many_apps_the_process_built() -> None:
    # Given two apps registered in one process, each with an executor of its own
    reached: list[str] = []

    def failing(name: str) -> Any:
        def executor() -> Any:
            reached.append(name)
            raise LookupError(name)

        return executor

    first = Celery("first", set_as_current=False)
    tasks.register(first, executor=failing("first"), deliveries=failing("first"))
    first.finalize()  # as a worker's app is once it runs
    second = Celery("second", set_as_current=False)
    tasks.register(second, executor=failing("second"), deliveries=failing("second"))
    # When the second app's task runs (its runtime fails: the message goes back)
    with pytest.raises(Retry):
        second.tasks[APPLY_TASK].run({"type": "ChangeBlockStatus"})
    # Then it reached the second app's runtime, never the one registered first
    assert reached and set(reached) == {"second"}
