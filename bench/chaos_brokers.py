"""Private brokers for ``make chaos``: a Redis and a RabbitMQ node of its own.

A chaos run restarts its broker and flushes its store, so it never uses the Redis on
6379 or the RabbitMQ on 5672 that others test against: it starts a Redis on 6390 (no
persistence) and a second RabbitMQ node ``chaos@localhost`` on 5690, in a temporary
directory, and stops both afterwards. As root, RabbitMQ's scripts run the node as the
``rabbitmq`` user, so the directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import kombu
import redis

REDIS_PORT: Final = 6390
AMQP_PORT: Final = 5690
DIST_PORT: Final = 25690
NODE: Final = "chaos@localhost"
STARTUP_S: Final = 60.0


def _wait(check: object, what: str, timeout: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout}s")
        time.sleep(0.2)  # polling a server that is starting


def _redis_up(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@contextmanager
def private_redis() -> Iterator[str]:
    """A Redis on 127.0.0.1:6390 without persistence; yields ``redis://...:6390``."""
    url = f"redis://127.0.0.1:{REDIS_PORT}"
    if _redis_up(url):
        raise RuntimeError(f"something already serves port {REDIS_PORT}; stop it first")
    argv = ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        _wait(lambda: _redis_up(url), "redis-server on 6390")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


class RabbitNode:
    """The ``chaos@localhost`` node: started, restarted (stop_app/start_app), stopped."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self.url = f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}//"
        config = base / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{AMQP_PORT}\n")
        (base / "enabled_plugins").write_text("[].\n")
        self._env = {
            **os.environ,
            "RABBITMQ_NODENAME": NODE,
            "RABBITMQ_NODE_PORT": str(AMQP_PORT),
            "RABBITMQ_DIST_PORT": str(DIST_PORT),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        }
        if os.geteuid() == 0:
            user = pwd.getpwnam("rabbitmq")
            for path in (base, config, base / "enabled_plugins"):
                os.chown(path, user.pw_uid, user.pw_gid)

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", NODE, *args],
            env=self._env,
            cwd=self._base,  # readable by the user the node runs as
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        """Start the node and wait until it accepts AMQP connections."""
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self._env,
            cwd=self._base,  # readable by the user the node runs as
            check=True,
            timeout=60,
        )
        # -detached returns before the node exists: until it does, await_startup fails.
        _wait(self._started, "the chaos RabbitMQ node")
        _wait(self.accepts, "the chaos RabbitMQ node's AMQP listener")

    def _started(self) -> bool:
        try:
            self._ctl("await_startup")
        except subprocess.CalledProcessError:
            return False
        return True

    def accepts(self) -> bool:
        """Whether the node takes an AMQP connection now."""
        try:
            with kombu.Connection(self.url, connect_timeout=1) as connection:
                connection.ensure_connection(max_retries=1)
        except Exception:
            return False
        return True

    def stop_app(self) -> None:
        """Stop the broker (the Erlang node stays up): every connection drops."""
        self._ctl("stop_app")

    def start_app(self) -> None:
        """Start the broker again."""
        self._ctl("start_app")

    def stop(self) -> None:
        """Stop the node."""
        with contextlib.suppress(subprocess.SubprocessError):
            self._ctl("stop")


@contextmanager
def private_rabbitmq() -> Iterator[RabbitNode]:
    """The ``chaos@localhost`` node on 5690, in a temporary directory."""
    if shutil.which("rabbitmq-server") is None:
        raise RuntimeError("rabbitmq-server is not installed")
    base = Path(tempfile.mkdtemp(prefix="subswitch-chaos-rabbit-"))
    node = RabbitNode(base)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)
