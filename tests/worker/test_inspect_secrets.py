"""Secrets stay out of what any broker client can ask a worker for (contract §5).

A real worker runs as a password-protected Redis ACL user (created for the test,
deleted after it); ``celery inspect conf``, ``celery report`` and the worker's own log
must not show the password. The same user may not run ``CONFIG``, as on many managed
Redis services, so the worker says it could not check the store's durability.
``SUBSWITCH_REMOTE_CONTROL=false`` turns Celery's remote control off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.conftest import REDIS_TEST_DB
from tests.worker.processes import running_worker

pytestmark = pytest.mark.integration

ACL_USER: Final = f"subswitch-test-{REDIS_TEST_DB}"
_CLI_DEADLINE_S: Final = 60.0


@pytest.fixture
def acl_url(clean_redis_url: str) -> Iterator[tuple[str, str]]:
    """``(url, password)`` of a fresh ACL user on the test DB that may not run CONFIG."""
    password = uuid.uuid4().hex
    admin = redis.Redis.from_url(clean_redis_url)
    admin.acl_setuser(
        ACL_USER,
        enabled=True,
        reset=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-config"],
    )
    parts = urlsplit(clean_redis_url)
    url = urlunsplit(parts._replace(netloc=f"{ACL_USER}:{password}@{parts.netloc}"))
    try:
        yield url, password
    finally:
        admin.acl_deluser(ACL_USER)
        admin.close()


def celery_cli(env: dict[str, str], *args: str) -> str:
    """Output of ``celery -A worker.app ARGS`` (stdout and stderr), within a deadline."""
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.app", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=_CLI_DEADLINE_S,
        check=False,
    )
    return result.stdout + result.stderr


def test_no_password_in_inspect_conf_report_or_the_worker_log(
    acl_url: tuple[str, str], tmp_path: Path
) -> None:
    # Given a worker whose broker and store URLs carry the ACL user's password
    url, password = acl_url
    env = {
        "SUBSWITCH_BROKER_URL": url,
        "SUBSWITCH_STORE_URL": url,
        "SUBSWITCH_UPSTREAM_URL": f"http://svc:{password}@127.0.0.1:1/v2",
        "SUBSWITCH_UPSTREAM_TOKEN": password,
        "SUBSWITCH_DATA_DIR": str(tmp_path),
    }
    with running_worker(env, lanes="normal", concurrency=2) as worker:
        # When any broker client asks it for its configuration, and for a bug report
        conf = celery_cli(env, "inspect", "conf", "--timeout", "5")
        report = celery_cli(env, "report")
        log = worker.log()
    # Then the worker answered, and the password is nowhere: not in the conf, the
    # report, or the log (which still names the store and the upstream, masked)
    assert "worker_prefetch_multiplier" in conf, conf
    assert "broker_url" in report, report
    for shown in (conf, report, log):
        assert password not in shown
    assert f"{ACL_USER}:***@" in log
    assert "upstream http://svc:***@127.0.0.1:1/v2" in log
    # ...and, CONFIG being refused, it said once that durability could not be checked
    assert log.count("could not be checked") == 1, log


def test_remote_control_can_be_turned_off(clean_redis_url: str, tmp_path: Path) -> None:
    # Given a worker started with SUBSWITCH_REMOTE_CONTROL=false
    env = {
        "SUBSWITCH_BROKER_URL": clean_redis_url,
        "SUBSWITCH_STORE_URL": clean_redis_url,
        "SUBSWITCH_DATA_DIR": str(tmp_path),
        "SUBSWITCH_REMOTE_CONTROL": "false",
    }
    with running_worker(env, lanes="normal", concurrency=2):
        # When a broker client pings every worker
        answer = celery_cli(env, "inspect", "ping", "--timeout", "3")
    # Then no worker answers (and so none would obey revoke or shutdown either)
    assert "pong" not in answer
    assert "No nodes replied" in answer, answer
