"""The worker's bootstrap: settings stay out of Celery's conf, the runtime is built at
start, a worker that cannot build it refuses in one line, and no unexpected exception
in a delivery ends in an ack."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import fakeredis
import pytest
from celery.exceptions import Retry

from producers.commands import block_status_command
from producers.publisher import CeleryPublisher
from subswitch.settings import Settings
from tests.worker.processes import queued_messages
from worker.bootstrap import RuntimeNotReady, create_app
from worker.deliveries import DeliveryCounter
from worker.executor import Executor
from worker.store import LuaScripts
from worker.tasks import run_apply, run_apply_batch

BROKER: Final = "redis://:broker-pw@127.0.0.1:1/0"
STORE: Final = "redis://:store-pw@127.0.0.1:1/1"
_START_DEADLINE_S: Final = 60.0


def test_settings_do_not_travel_through_celery_conf() -> None:
    # Given settings with passwords in both URLs and a static upstream token
    settings = Settings(broker_url=BROKER, store_url=STORE, upstream_token="static-tok")
    # When the worker's app is created
    app = create_app(settings)
    # Then nothing of ours is in its conf, not even uncensored (what `inspect conf` reads)
    conf = str(app.conf.table(with_defaults=True, censored=False))
    assert "store-pw" not in conf
    assert "static-tok" not in conf
    assert "Settings(" not in conf
    assert not [key for key in app.conf if key.startswith("subswitch")]
    app.close()


@pytest.mark.parametrize("remote_control", [True, False])
def test_celery_remote_control_follows_the_setting(remote_control: bool) -> None:
    # Given SUBSWITCH_REMOTE_CONTROL / When the app is created / Then Celery's switch follows
    settings = Settings(broker_url=BROKER, store_url=STORE, remote_control=remote_control)
    app = create_app(settings)
    assert app.conf.worker_enable_remote_control is remote_control
    app.close()


@dataclass
class Request:
    id: str = "message-1"
    retries: int = 0


@dataclass
class FakeTask:
    """The part of a bound Celery task the delivery code uses; records each retry."""

    request: Request = field(default_factory=Request)
    retried: list[int] = field(default_factory=list)

    def retry(self, *, countdown: int) -> Retry:
        self.retried.append(countdown)
        return Retry("sent back", None)


def _not_built() -> Executor:
    raise RuntimeNotReady("the worker runtime was not built in this process")


def _broken() -> Executor:
    raise KeyError("a bug")


COMMAND: Final = {"type": "ChangeBlockStatus"}


def _counter_beside(executor: Callable[[], Executor]) -> Callable[[], DeliveryCounter]:
    """The delivery counter of the same process: missing too when the runtime is."""
    if executor is _not_built:
        return _not_built  # type: ignore[return-value]
    counter = DeliveryCounter(scripts=LuaScripts(client=fakeredis.FakeRedis()), limit=5)
    return lambda: counter


@pytest.mark.parametrize("executor", [_not_built, _broken], ids=["no runtime", "a bug"])
@pytest.mark.parametrize(
    "deliver",
    [
        lambda task, executor: run_apply(
            task, (COMMAND,), {}, executor=executor, deliveries=_counter_beside(executor)
        ),
        lambda task, executor: run_apply(
            task, (1, 2), {}, executor=executor, deliveries=_counter_beside(executor)
        ),
        lambda task, executor: run_apply_batch(
            task, ([COMMAND],), {}, executor=executor, deliveries=_counter_beside(executor)
        ),
        lambda task, executor: run_apply_batch(
            task, ("x",), {"y": 1}, executor=executor, deliveries=_counter_beside(executor)
        ),
    ],
    ids=["apply", "apply malformed", "batch", "batch malformed"],
)
def test_an_unexpected_exception_sends_the_message_back_never_acks_it(
    executor: Callable[[], Executor], deliver: Callable[[Any, Callable[[], Executor]], Any]
) -> None:
    # Given a delivery whose executor raises something nobody expected
    task = FakeTask()
    # When the delivery runs
    with pytest.raises(Retry):
        deliver(task, executor)
    # Then it ends in a retry through the broker (never a return, which Celery acks)
    assert len(task.retried) == 1


def _worker_argv(entry: str) -> list[str]:
    if entry == "celery":
        return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "threads"]
    argv = [sys.executable, "-m", "subswitch", "worker", "-c", "2"]
    return argv + ([] if entry == "all lanes" else ["--lanes", "normal"])


def start_worker(entry: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Start a worker the way ``entry`` says and wait (with a deadline) for it to end."""
    return subprocess.run(
        _worker_argv(entry),
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=_START_DEADLINE_S,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    output = result.stdout + result.stderr
    # (Celery's SecurityWarning when tests run as root is the only other output.)
    errors = [line for line in output.splitlines() if line.startswith("error")]
    assert result.returncode == code, output
    assert errors == [errors[0]], output
    assert errors[0].startswith("error: worker cannot start: ")
    assert fragment in errors[0]
    assert "Traceback" not in output
    assert " ready." not in output
    assert "-pw" not in output


@pytest.mark.integration
@pytest.mark.parametrize("entry", ["all lanes", "one lane", "celery"])
def test_a_worker_without_its_credentials_refuses_and_the_command_stays_queued(
    clean_redis_url: str, tmp_path: Path, entry: str
) -> None:
    # Given a command waiting on the normal lane
    publisher = CeleryPublisher.from_settings(Settings(broker_url=clean_redis_url))
    command = block_status_command(
        org_id="telco", subscription_id=7, block_id=1, active=True, source="tests"
    )
    publisher.publish(command)
    publisher.close()
    # When a worker starts whose service-account file is missing
    env = {
        "SUBSWITCH_BROKER_URL": clean_redis_url,
        "SUBSWITCH_STORE_URL": clean_redis_url,
        "SUBSWITCH_SERVICE_ACCOUNT_FILE": str(tmp_path / "missing.json"),
        "SUBSWITCH_TOKEN_URL": "http://127.0.0.1:1/token",
        "SUBSWITCH_DATA_DIR": str(tmp_path),
    }
    result = start_worker(entry, env, tmp_path)
    # Then it exits 2 with one line naming the file, and the command is still queued
    assert_refused(result, 2, "missing.json")
    assert queued_messages(clean_redis_url, clean_redis_url) == 1


@pytest.mark.parametrize(
    ("env", "code", "fragment"),
    [
        ({"SUBSWITCH_BROKER_URL": BROKER}, 2, "SUBSWITCH_STORE_URL is not set"),
        ({"SUBSWITCH_STORE_URL": STORE}, 2, "SUBSWITCH_BROKER_URL is not set"),
        ({"SUBSWITCH_BROKER_URL": BROKER, "SUBSWITCH_STORE_URL": STORE}, 3, "store unreachable"),
    ],
    ids=["broker only", "store only", "store down"],
)
@pytest.mark.parametrize("entry", ["all lanes", "celery"])
def test_a_half_configured_or_storeless_worker_refuses_in_one_line(
    env: dict[str, str], code: int, fragment: str, entry: str, tmp_path: Path
) -> None:
    # Given one URL without the other, or a store that does not answer
    env = {**env, "SUBSWITCH_DATA_DIR": str(tmp_path)}
    for name in ("SUBSWITCH_BROKER_URL", "SUBSWITCH_STORE_URL"):
        env.setdefault(name, "")
    # When a worker starts
    result = start_worker(entry, env, tmp_path)
    # Then it refuses in one line naming what is missing, and no private store started
    assert_refused(result, code, fragment)
    assert not (tmp_path / "redis.sock").exists()
