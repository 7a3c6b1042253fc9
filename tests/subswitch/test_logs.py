"""Log lines: text or one JSON object per line, with the command's fields, no secrets."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from subswitch.cli import app
from subswitch.logs import (
    HANDLER_NAME,
    ContextFilter,
    JsonFormatter,
    LogFormat,
    TextFormatter,
    add_log_context,
    configure_logging,
    current_log_context,
    formatter,
    log_context,
)
from subswitch.redact import redact_text

Capture = tuple[logging.Logger, io.StringIO, logging.Handler]


@pytest.fixture
def capture() -> Iterator[Capture]:
    """A private logger with one handler writing to a buffer (no root changes)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)


def _with(handler: logging.Handler, fmt: LogFormat) -> None:
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())


def test_json_lines_carry_the_command_fields(capture: Capture) -> None:
    logger, stream, handler = capture
    _with(handler, LogFormat.JSON)
    # Given a command being handled, its attempt known
    with log_context(command_id="c-1", correlation_id="case-9", lane="urgent", target="t/1"):
        add_log_context(attempt=2)
        # When two lines are logged, one with the outcome and a hostile newline
        logger.info("command %s", "applied", extra={"outcome": "applied"})
        logger.warning("upstream said\nsomething else")
    logger.info("outside")
    # Then each line is one JSON object with the fields where they apply
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    first, second, outside = (json.loads(line) for line in lines)
    assert first["message"] == "command applied"
    assert first["level"] == "INFO"
    assert first["time"].endswith("Z")
    assert {k: first[k] for k in ("command_id", "correlation_id", "lane", "target")} == {
        "command_id": "c-1",
        "correlation_id": "case-9",
        "lane": "urgent",
        "target": "t/1",
    }
    assert (first["attempt"], first["outcome"]) == (2, "applied")
    assert second["message"] == "upstream said\nsomething else"
    assert "outcome" not in second
    assert "command_id" not in outside


def test_text_lines_name_the_fields_after_the_message(capture: Capture) -> None:
    logger, stream, handler = capture
    _with(handler, LogFormat.TEXT)
    # Given a command context without a correlation id
    with log_context(command_id="c-2", correlation_id=None, lane="bulk", target="t/2"):
        # When a line is logged
        logger.info("command %s", "failed", extra={"outcome": "failed"})
    # Then it is Celery's text line followed by the fields that apply, in order
    line = stream.getvalue().rstrip("\n")
    assert "INFO/MainProcess] command failed [command_id=c-2 lane=bulk target=t/2" in line
    assert line.endswith("outcome=failed]")
    assert "correlation_id" not in line


def test_the_context_ends_with_its_block() -> None:
    # Given nested contexts / When the inner one ends / Then the outer fields remain
    with log_context(command_id="outer"):
        with log_context(lane="normal"):
            assert current_log_context() == {"command_id": "outer", "lane": "normal"}
        assert current_log_context() == {"command_id": "outer"}
    assert current_log_context() == {}


@pytest.mark.parametrize("fmt", list(LogFormat))
def test_secrets_never_reach_a_line(capture: Capture, fmt: LogFormat) -> None:
    logger, stream, handler = capture
    _with(handler, fmt)
    # Given messages that quote a broker URL with its password, a token and a query secret
    logger.warning("cannot reach amqp://fraud:s3cr3t-pw@rabbit:5672//")
    logger.warning("sent Authorization: Bearer eyJhbGciOi.J9x-token")
    logger.warning("store redis://h:6379/0?password=qu3ry-pw&db=1 refused")
    # When they are formatted / Then no secret appears, the rest does
    out = stream.getvalue()
    for secret in ("s3cr3t-pw", "eyJhbGciOi.J9x-token", "qu3ry-pw"):
        assert secret not in out
    assert "amqp://fraud:***@rabbit:5672//" in out
    assert "Bearer ***" in out
    assert "password=***&db=1" in out


def test_redact_text_leaves_plain_text_alone() -> None:
    # Given a line without secrets / When redacted / Then it is unchanged
    line = "command applied at http://127.0.0.1:8080/v2 for user@example"
    assert redact_text(line) == line


def test_configure_logging_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    level = root.level
    try:
        # Given logging configured twice, text then JSON
        configure_logging(LogFormat.TEXT, level=logging.INFO)
        configure_logging(LogFormat.JSON, level=logging.WARNING)
        # Then one subswitch handler remains, JSON, beside the foreign one
        ours = [h for h in root.handlers if h.get_name() == HANDLER_NAME]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, JsonFormatter)
        assert other in root.handlers
        assert root.level == logging.WARNING
    finally:
        for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
            root.removeHandler(handler)
        root.removeHandler(other)
        root.setLevel(level)


def test_text_formatter_keeps_a_traceback_after_the_fields() -> None:
    # Given a record with an exception and a command context
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
        record.exc_info = sys.exc_info()
    record.command_id = "c-3"
    # When formatted / Then the fields end the first line, the traceback follows
    head, _, rest = TextFormatter().format(record).partition("\n")
    assert head.endswith("failed [command_id=c-3]")
    assert "ValueError: boom" in rest


def test_a_bad_log_format_is_one_line_with_status_2(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an unknown SUBSWITCH_LOG_FORMAT
    monkeypatch.setenv("SUBSWITCH_LOG_FORMAT", "xml")
    # When any command runs
    result = CliRunner().invoke(app, ["unblock", "telco", "1", "--block-id", "1"])
    # Then it ends with one line naming the variable, status 2
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "SUBSWITCH_LOG_FORMAT" in result.output
