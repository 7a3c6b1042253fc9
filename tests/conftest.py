"""Shared fixtures: the real brokers integration tests run against.

- ``redis_url`` (session): ``redis://127.0.0.1:6379/<db>`` once Redis answers a PING.
- ``clean_redis_url``: the same, the DB flushed, held for this test alone (see below).
- ``amqp_url`` (session): ``amqp://guest:guest@127.0.0.1:5672/<vhost>`` once RabbitMQ
  accepts a connection (the vhost is created if it is missing).
- ``clean_amqp_url``: the same, subswitch queues deleted, held for this test alone.
- ``broker_url``: ``clean_redis_url`` then ``clean_amqp_url`` (ids ``redis``, ``rabbitmq``).

A broker that does not answer skips the test locally and fails it when ``CI=true``.

The queue names are fixed by the contract, so two test sessions on one broker (two
checkouts, two engineers, two xdist workers) would consume and purge each other's
messages. Each session therefore works in a namespace of its own, a Redis DB and a
RabbitMQ vhost (see ``session_namespace``): ``SUBSWITCH_TEST_REDIS_DB`` (default 15) and
``SUBSWITCH_TEST_AMQP_VHOST`` (default ``/``) name the base one; xdist worker ``gwN``
takes DB ``base - N`` and, for N > 0, vhost ``<base>-gwN``. Should two sessions still
share a namespace, the ``clean_*`` fixtures hold a per-namespace lock for the duration
of the test: a lock key in the Redis test DB, an exclusive queue on RabbitMQ (released
by the broker if the process dies). Start workers and consumers inside the test or in
fixtures that depend on these, so they are gone before the lock is released. Anything
else a test starts (simulators, servers, embedded Redis) listens on a free port or a
socket under its own temporary directory, never a fixed one.

Tests using any of these fixtures are marked ``integration`` automatically (marking
them explicitly too is fine), so ``pytest -m "not integration"`` needs no broker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, NoReturn
from urllib.parse import quote

import amqp.exceptions
import pytest
import redis
from kombu import Connection
from kombu.exceptions import KombuError
from redis.backoff import NoBackoff
from redis.retry import Retry

from subswitch.broker import is_amqp
from subswitch.contract import DEAD_LETTER_QUEUE, Lane

REDIS_HOST: Final = "127.0.0.1"
REDIS_PORT: Final = 6379
#: A Redis server's DBs by default (0 to 15).
REDIS_DBS: Final = 16
AMQP_ROOT: Final = "amqp://guest:guest@127.0.0.1:5672/"
#: The vhost prefix of xdist workers when the base vhost is RabbitMQ's default ``/``.
DEFAULT_VHOST_PREFIX: Final = "subswitch-test"


@dataclass(frozen=True)
class Namespace:
    """Where one test session (one xdist worker) keeps its Redis keys and its queues."""

    redis_db: int
    amqp_vhost: str
    #: ``gwN`` under xdist, else ``""``.
    worker: str = ""

    @property
    def slug(self) -> str:
        """A lowercase identifier unique to this namespace (``subswitch_test_wa_gw1_11``),
        for anything else a test keeps on a shared server: a PostgreSQL database or
        schema, a key or queue prefix."""
        words = re.sub(r"[^a-z0-9]+", "_", f"{self.amqp_vhost}_{self.redis_db}".lower())
        return f"subswitch_test_{words.strip('_')}"


def session_namespace(environ: Mapping[str, str]) -> Namespace:
    """The namespace of the session whose environment is ``environ``.

    ``SUBSWITCH_TEST_REDIS_DB`` (default 15) and ``SUBSWITCH_TEST_AMQP_VHOST`` (default
    ``/``) name the base namespace, which a session outside xdist and xdist worker
    ``gw0`` use. Worker ``gwN`` takes DB ``base - N`` (counting down, never up into a
    developer's DB 0) and vhost ``<base>-gwN`` (``subswitch-test-gwN`` for ``/``).
    """
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    base_db = int(environ.get("SUBSWITCH_TEST_REDIS_DB", "15"))
    base_vhost = environ.get("SUBSWITCH_TEST_AMQP_VHOST", "/")
    vhost = base_vhost
    if index:
        vhost = f"{DEFAULT_VHOST_PREFIX if base_vhost == '/' else base_vhost}-gw{index}"
    return Namespace(redis_db=base_db - index, amqp_vhost=vhost, worker=worker)


NAMESPACE: Final = session_namespace(os.environ)
#: A DB of its own, flushed per test, so tests never touch a developer's data in DB 0.
REDIS_TEST_DB: Final = NAMESPACE.redis_db
REDIS_URL: Final = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_TEST_DB}"
AMQP_VHOST: Final = NAMESPACE.amqp_vhost
AMQP_URL: Final = AMQP_ROOT + ("/" if AMQP_VHOST == "/" else quote(AMQP_VHOST, safe=""))
SUBSWITCH_QUEUES: Final = (*(lane.queue for lane in Lane), DEAD_LETTER_QUEUE)
BROKER_FIXTURES: Final = frozenset(
    {"redis_url", "clean_redis_url", "amqp_url", "clean_amqp_url", "broker_url"}
)
LOCK_NAME: Final = "subswitch.test-lock"
#: Longer than any test may run (pytest timeout 120 s): a crashed holder's lock expires.
LOCK_TTL_MS: Final = 300_000
LOCK_WAIT_S: Final = 300.0
#: A loaded machine (two test processes, workers, a broker on the same two cores) may
#: take seconds to finish an AMQP handshake: the fixtures wait that long, not 2 s.
AMQP_CONNECT_TIMEOUT_S: Final = 10
_LOCK_POLL_S: Final = 0.05
_RELEASE_IF_OURS: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def broker_unavailable(message: str) -> NoReturn:
    """Skip the test, or fail it on CI (``CI=true``), where brokers must be up."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def purge_subswitch_queues(url: str) -> None:
    """Leave no message in ``subswitch.urgent/normal/bulk/dead`` on the broker at ``url``.

    On RabbitMQ the queues are deleted, so the next declaration starts afresh whatever
    arguments an earlier run used (and a test can observe "no queue yet"); on Redis
    they are emptied (a list without messages does not exist anyway).
    """
    with Connection(url, connect_timeout=AMQP_CONNECT_TIMEOUT_S) as connection:
        channel = connection.default_channel
        for name in SUBSWITCH_QUEUES:
            if is_amqp(url):
                channel.queue_delete(name)
            else:
                channel.queue_purge(name)


def _wait_for_lock(acquire: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    while not acquire():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} stayed locked by another test session for {LOCK_WAIT_S} s")
        time.sleep(_LOCK_POLL_S)  # polling a lock another process holds


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the Redis test DB (not flushed, not locked: see ``clean_redis_url``)."""
    if not 0 < REDIS_TEST_DB < REDIS_DBS:
        pytest.fail(
            f"xdist worker {NAMESPACE.worker or '(none)'} would use Redis DB {REDIS_TEST_DB}:"
            f" SUBSWITCH_TEST_REDIS_DB must leave one DB between 1 and {REDIS_DBS - 1} per"
            " worker (worker gwN uses DB base - N)",
            pytrace=False,
        )
    client = redis.Redis(
        host=REDIS_HOST, port=REDIS_PORT, db=REDIS_TEST_DB, socket_connect_timeout=1,
        socket_timeout=1, retry=Retry(NoBackoff(), 0),
    )  # fmt: skip
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        broker_unavailable(
            f"Redis DB {REDIS_TEST_DB} not reachable at {REDIS_HOST}:{REDIS_PORT} ({exc}):"
            " start it to run integration tests"
        )
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def clean_redis_url(redis_url: str) -> Iterator[str]:
    """``redis_url``, flushed, used by this test alone until it ends."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    token = uuid.uuid4().hex
    _wait_for_lock(
        lambda: client.set(LOCK_NAME, token, nx=True, px=LOCK_TTL_MS), f"Redis {redis_url}"
    )
    try:
        with client.pipeline(transaction=True) as pipe:  # the flush keeps our lock
            pipe.flushdb().set(LOCK_NAME, token, px=LOCK_TTL_MS).execute()
        yield redis_url
    finally:
        client.eval(_RELEASE_IF_OURS, 1, LOCK_NAME, token)
        client.close()


def _connect(url: str) -> None:
    with Connection(url, connect_timeout=AMQP_CONNECT_TIMEOUT_S) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0)


def create_vhost(vhost: str) -> str | None:
    """Create ``vhost`` (if missing) and let guest use it: None, or why that failed.

    Needs ``rabbitmqctl`` and the right to run it (root, or the rabbitmq user); the
    management plugin, and so its HTTP API, may be off.
    """
    ctl = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin:/sbin")
    if ctl is None:
        return "rabbitmqctl not found"
    for args in (("add_vhost", vhost), ("set_permissions", "-p", vhost, "guest", *[".*"] * 3)):
        try:
            done = subprocess.run(
                [ctl, *args], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"rabbitmqctl {args[0]}: {exc}"
        output = (done.stderr or done.stdout).strip()
        if done.returncode != 0 and "already exists" not in output:
            last = output.splitlines()[-1] if output else f"exit status {done.returncode}"
            return f"rabbitmqctl {args[0]}: {last}"
    return None


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of the RabbitMQ test vhost (not purged, not locked: see ``clean_amqp_url``).

    A missing vhost (say ``wa-gw1``, the first time a session runs on two xdist
    workers) is created, with every permission for guest.
    """
    unreachable = "RabbitMQ not reachable at 127.0.0.1:5672: start it to run integration tests"
    try:
        _connect(AMQP_URL)
    except (amqp.exceptions.NotAllowed, amqp.exceptions.AccessRefused):
        # The vhost does not exist, or guest may not use it.
        problem = create_vhost(AMQP_VHOST)
        if problem is not None:
            broker_unavailable(
                f"RabbitMQ vhost {AMQP_VHOST!r} is missing and could not be created ({problem}):"
                f" run `rabbitmqctl add_vhost {AMQP_VHOST}` and `rabbitmqctl set_permissions"
                f" -p {AMQP_VHOST} guest '.*' '.*' '.*'`"
            )
        try:
            _connect(AMQP_URL)
        except (amqp.exceptions.AMQPError, KombuError, OSError) as exc:
            broker_unavailable(f"RabbitMQ vhost {AMQP_VHOST!r} created but refused: {exc}")
    except (KombuError, OSError):
        broker_unavailable(unreachable)
    return AMQP_URL


@pytest.fixture
def clean_amqp_url(amqp_url: str) -> Iterator[str]:
    """``amqp_url`` with the subswitch queues deleted, used by this test alone."""
    with Connection(amqp_url, connect_timeout=AMQP_CONNECT_TIMEOUT_S) as connection:

        def acquire() -> bool:
            try:  # only one connection at a time may hold an exclusive queue
                connection.channel().queue_declare(LOCK_NAME, exclusive=True)
            except amqp.exceptions.ResourceLocked:
                return False
            return True

        _wait_for_lock(acquire, f"RabbitMQ vhost {AMQP_VHOST!r}")
        purge_subswitch_queues(amqp_url)
        yield amqp_url  # closing the connection releases the lock


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each broker in turn, clean and locked for this test."""
    fixture = "clean_redis_url" if request.param == "redis" else "clean_amqp_url"
    url: str = request.getfixturevalue(fixture)
    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a broker fixture as ``integration``."""
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
