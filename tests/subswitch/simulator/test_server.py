"""Serving over uvicorn: sockets, URLs and the silenced injected drops."""

from __future__ import annotations

import logging
import socket
import sys

import httpx
import pytest
from uvicorn.config import LOGGING_CONFIG

from subswitch.simulator.config import Faults, SimulatorConfig
from subswitch.simulator.faults import InjectedDrop
from subswitch.simulator.server import (
    InjectedDropFilter,
    bind_socket,
    describe,
    logging_config,
    socket_url,
)
from subswitch.simulator.testing import SimulatorHandle
from tests.subswitch.simulator.helpers import AUTH


def _record(exc: BaseException | None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc else None
    return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "boom", (), exc_info)


def test_filter_drops_only_injected_drops() -> None:
    # Given the filter
    keep = InjectedDropFilter().filter
    # Then a record of an injected drop is dropped, every other record kept
    assert keep(_record(InjectedDrop())) is False
    assert keep(_record(RuntimeError("real bug"))) is True
    assert keep(_record(None)) is True


def test_logging_config_adds_the_filter_without_touching_uvicorns() -> None:
    # When the simulator's logging config is built
    config = logging_config()
    # Then uvicorn.error carries the filter, and uvicorn's own dictionary is unchanged
    assert config["loggers"]["uvicorn.error"]["filters"] == ["injected_drops"]
    assert "filters" not in LOGGING_CONFIG["loggers"]["uvicorn.error"]


def test_port_zero_binds_a_free_port() -> None:
    # When a socket is bound to port 0 on loopback
    with bind_socket("127.0.0.1", 0) as sock:
        url = socket_url(sock)
        port = sock.getsockname()[1]
    # Then its URL names the port it got
    assert port > 0
    assert url == f"http://127.0.0.1:{port}"


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")
def test_ipv6_urls_are_bracketed() -> None:
    # When a socket is bound on the IPv6 loopback
    try:
        sock = bind_socket("::1", 0)
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    # Then its URL puts the address in brackets
    with sock:
        assert socket_url(sock).startswith("http://[::1]:")


def test_busy_port_is_an_os_error() -> None:
    # Given a port already listened on
    with bind_socket("127.0.0.1", 0) as first:
        port = first.getsockname()[1]
        # When another socket is bound to it (without SO_REUSEPORT)
        # Then binding fails
        with pytest.raises(OSError):
            bind_socket("127.0.0.1", port).close()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.skipif(sys.platform == "win32", reason="uvicorn logging differs")
def test_injected_drops_leave_no_traceback_in_the_log(sim: SimulatorHandle) -> None:
    # Given a handler on uvicorn's error logger and every connection dropped
    collector = _Collect()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(collector)
    sim.admin.set_faults(p_drop=1.0)
    try:
        # When three writes are dropped
        with httpx.Client(base_url=sim.base_url, headers=AUTH) as client:
            for _ in range(3):
                with pytest.raises(httpx.RemoteProtocolError):
                    client.patch("/orgs/telco/subscriptions/7/blocks/1", json={"active": True})
    finally:
        logger.removeHandler(collector)
    # Then uvicorn logged nothing about them
    assert [record.getMessage() for record in collector.records] == []


def test_summary_names_settings_but_no_secrets() -> None:
    # Given a config with a secret token, a fault and authentication on
    config = SimulatorConfig(tokens=("top-secret",), faults=Faults(p_500=0.25), subscriptions=9)
    # When it is summarised
    summary = describe(config)
    # Then the summary shows the settings and faults, never the token
    assert "subscriptions 1..9" in summary
    assert "1 static token(s)" in summary
    assert "p_500=0.25" in summary
    assert "top-secret" not in summary
    assert "faults none" in describe(SimulatorConfig(auth=False))
    assert "auth off (requests need no token)" in describe(SimulatorConfig(auth=False))
