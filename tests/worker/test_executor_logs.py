"""The executor's log lines: one per delivered command, every line with its fields."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from subswitch.contract import ChangeBlockStatus
from subswitch.logs import FIELDS, ContextFilter
from tests.worker.conftest import Harness
from worker.upstream import UpstreamUnavailable

BlockFactory = Callable[..., ChangeBlockStatus]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The executor's records at INFO, with the fields the subswitch handler adds."""
    context = ContextFilter()
    caplog.handler.addFilter(context)
    with caplog.at_level(logging.INFO, logger="worker.executor"):
        yield caplog
    caplog.handler.removeFilter(context)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {key: record.__dict__[key] for key in FIELDS if key in record.__dict__}


def test_an_applied_command_logs_one_line_with_its_fields(
    harness: Harness, block: BlockFactory, logs: pytest.LogCaptureFixture
) -> None:
    # Given an urgent block with a correlation id
    command = block(command_id="fraud-1", correlation_id="case-1", priority="urgent")
    # When it is handled
    harness.executor.handle(command.model_dump(mode="json"), token="t1")
    # Then one INFO line says so, with every field that applies
    [line] = [r for r in logs.records if r.name == "worker.executor"]
    assert line.levelno == logging.INFO
    assert line.getMessage() == "command applied"
    assert _fields(line) == {
        "command_id": "fraud-1",
        "correlation_id": "case-1",
        "lane": "urgent",
        "target": "orgs/telco/subscriptions/7/blocks/1",
        "attempt": 1,
        "outcome": "applied",
    }


def test_a_retried_attempt_logs_its_lines_with_the_attempt(
    harness: Harness, block: BlockFactory, logs: pytest.LogCaptureFixture
) -> None:
    # Given an upstream that answers 503 once
    harness.upstream.script = [UpstreamUnavailable("503", status=503)]
    # When the command is delivered
    harness.executor.handle(block(command_id="c-503").model_dump(mode="json"), token="t1")
    # Then the failed attempt and the way back to the broker are logged with the fields,
    # without an outcome (there is none yet)
    lines = [r for r in logs.records if r.name == "worker.executor"]
    assert [r.getMessage().split(" ")[0] for r in lines] == ["attempt", "command"]
    assert lines[-1].getMessage().startswith("command back in ")
    for line in lines:
        assert _fields(line) == {
            "command_id": "c-503",
            "lane": "normal",
            "target": "orgs/telco/subscriptions/7/blocks/1",
            "attempt": 1,
        }
