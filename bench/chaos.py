"""``make chaos`` (``python -m bench.chaos``): subswitch's promises under a hostile fleet.

Sends a :mod:`bench.chaos_plan` (2,000 commands on 200 targets, shuffled, some twice,
some reusing an id with another payload) through real ``subswitch worker`` processes
to the simulator injecting transient (429, 500, 503), ambiguous (502, 504, applied
then the answer lost) and late-applied answers, while one worker is SIGKILLed and
replaced every few seconds and, on RabbitMQ, the broker is restarted mid-run. Then it
checks, from the outside only (the result events and the simulator's admin view):

- exactly one outcome per command (one event id per command, copies identical; a
  reused id gets its own ``rejected`` event), nothing missing, nothing stray;
- the upstream's final state equals every target's newest intent;
- no older write applied after a newer one on a target (the write log's ``applied_at``);
- never two writes in flight on one target (the simulator's in-flight maximum).

Both brokers are private (see :mod:`bench.chaos_brokers`). The table goes to stdout
and ``bench/results/chaos.md`` (raw figures in ``chaos.json``); the exit status is 1
if any check failed.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import kombu
import redis

from bench.chaos_brokers import private_rabbitmq, private_redis
from bench.chaos_checks import ChaosReport, Observed, check, render_table
from bench.chaos_plan import FULL, ChaosSize, Message, Plan, build_plan
from bench.config import RESULTS_DIR, TOKEN
from producers.errors import PublishError
from producers.publisher import CeleryPublisher
from subswitch.broker import EVENTS
from subswitch.settings import Settings
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.worker.processes import WorkerProcess

#: Simulator faults per write: transient, ambiguous and late (zombie) answers.
FAULTS: dict[str, str] = {
    "--latency-ms": "10",
    "--jitter-ms": "20",
    "--p-429": "0.03",
    "--p-500": "0.03",
    "--p-503": "0.03",
    "--p-502": "0.02",
    "--p-504": "0.02",
    "--p-lost-response": "0.03",
    "--p-late-apply": "0.03",
    "--late-apply-ms": "3000",
}
#: Worker settings: a read timeout far below the late writes' 3 s, a settle time above.
WORKER_ENV: dict[str, str] = {
    "SUBSWITCH_UPSTREAM_TOKEN": TOKEN,
    "SUBSWITCH_CONNECT_TIMEOUT": "1",
    "SUBSWITCH_WRITE_TIMEOUT": "1",
    "SUBSWITCH_POOL_TIMEOUT": "1",
    "SUBSWITCH_READ_TIMEOUT": "1",
    "SUBSWITCH_SETTLE_SECONDS": "5",
    "SUBSWITCH_MAX_ATTEMPTS": "30",
    "SUBSWITCH_BREAKER": "false",
}
EVENTS_QUEUE = "subswitch.chaos-events"
PUBLISH_GIVE_UP_S = 90.0


@dataclass
class Broker:
    """Where one run happens; ``restart`` (stop, start) when the broker may be restarted."""

    name: str
    broker_url: str
    store_url: str
    restart: tuple[Callable[[], None], Callable[[], None]] | None = None


# --- events -------------------------------------------------------------------------


class EventCollector:
    """Takes every result event off a durable queue bound to ``subswitch.events``.

    Durable, so events published while this process is reconnecting (a broker restart)
    wait for it; every connection failure just means "reconnect on the next drain".
    """

    def __init__(self, broker_url: str) -> None:
        self._url = broker_url
        self._queue = kombu.Queue(EVENTS_QUEUE, exchange=EVENTS, routing_key="command.#")
        self._connection: kombu.Connection | None = None
        self.events: list[dict[str, Any]] = []

    def declare(self) -> None:
        """Create the queue and its binding before any event can be published."""
        with kombu.Connection(self._url, connect_timeout=5) as connection:
            channel = connection.default_channel
            EVENTS(channel).declare()
            self._queue(channel).declare()
            self._queue(channel).purge()

    def drain(self, limit: int = 2_000) -> int:
        """Take up to ``limit`` waiting events; how many were taken."""
        taken = 0
        try:
            if self._connection is None:
                self._connection = kombu.Connection(self._url, connect_timeout=2)
            bound = self._queue(self._connection.default_channel)
            while taken < limit and (message := bound.get(no_ack=True)) is not None:
                self.events.append(json.loads(message.body or b"null"))
                taken += 1
        except Exception:
            self.close()
        return taken

    def delete(self) -> None:
        """Remove the queue (the run is over)."""
        with kombu.Connection(self._url, connect_timeout=5) as connection:
            self._queue(connection.default_channel).delete()

    def close(self) -> None:
        """Drop the connection."""
        if self._connection is not None:
            self._connection.release()
            self._connection = None

    def seen_ids(self) -> set[str]:
        """Every event id received so far."""
        return {event["id"] for event in self.events}


# --- sending ------------------------------------------------------------------------


def _publish(publisher: CeleryPublisher, send: Callable[[], None]) -> None:
    # At least once, like any producer: a publish that failed (broker away) is repeated.
    deadline = time.monotonic() + PUBLISH_GIVE_UP_S
    while True:
        try:
            send()
            return
        except PublishError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # the broker is restarting; try again shortly


def _sends(messages: list[Message], chunk_size: int) -> Iterator[list[Message]]:
    """Singles as they come; bulk ones gathered into chunks of ``chunk_size``."""
    chunk: list[Message] = []
    for message in messages:
        if message.command.priority != "bulk":
            yield [message]
            continue
        chunk.append(message)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def send_all(broker_url: str, plan: Plan, size: ChaosSize, visibility_s: int) -> None:
    """Send the plan paced over ``size.send_over_s`` (bulk in chunks)."""
    batches = list(_sends(plan.messages, size.chunk_size))
    pause = size.send_over_s / max(1, len(batches))
    queue_type = Settings().rabbitmq_queue_type  # what the workers declare, from the same env
    publisher = CeleryPublisher(
        broker_url=broker_url, visibility_timeout=visibility_s, queue_type=queue_type
    )
    try:
        for batch in batches:
            commands = [message.command for message in batch]
            if len(commands) == 1 and commands[0].priority != "bulk":
                _publish(publisher, partial(publisher.publish, commands[0]))
            else:
                _publish(publisher, partial(publisher.publish_batch, commands))
            time.sleep(pause)  # pacing the load over the kill window, not synchronisation
    finally:
        publisher.close()


# --- the fleet ----------------------------------------------------------------------


@dataclass
class Fleet:
    """The worker processes of a run; one is SIGKILLed and replaced on demand."""

    env: dict[str, str]
    concurrency: int
    rng: random.Random
    live: list[WorkerProcess] = field(default_factory=list)
    dead: list[WorkerProcess] = field(default_factory=list)
    started: int = 0

    def start(self, *, wait: bool) -> WorkerProcess:
        """One more worker process."""
        self.started += 1
        worker = WorkerProcess(self.env, concurrency=self.concurrency, name=f"chaos{self.started}")
        self.live.append(worker)
        if wait:
            worker.wait_ready(timeout=90)
        return worker

    def kill_one(self) -> None:
        """SIGKILL a random worker (its whole process group) and start its replacement."""
        victim = self.rng.choice(self.live)
        victim.kill()
        self.live.remove(victim)
        self.dead.append(victim)
        self.start(wait=False)

    def stop(self) -> None:
        """Warm shutdown of every live worker, all at once."""
        for worker in self.live:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.live:
            worker.stop()  # waits for the warm shutdown, SIGKILL if it hangs

    def logs(self, chars: int = 4000) -> str:
        """The end of every worker's output."""
        return "\n".join(w.log()[-chars:] for w in [*self.dead, *self.live])


@contextmanager
def fleet(env: dict[str, str], size: ChaosSize, rng: random.Random) -> Iterator[Fleet]:
    """``size.workers`` ready workers, stopped on exit."""
    workers = Fleet(env, size.concurrency, rng)
    try:
        for worker in [workers.start(wait=False) for _ in range(size.workers)]:
            worker.wait_ready(timeout=90)
        yield workers
    finally:
        workers.stop()


# --- one run ------------------------------------------------------------------------


@dataclass
class Schedule:
    """When to kill a worker and when to restart the broker, relative to the start."""

    size: ChaosSize
    broker: Broker
    started: float = field(default_factory=time.monotonic)
    kills: int = 0
    restarts: int = 0
    _stopped_at: float | None = None

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def step(self, workers: Fleet) -> None:
        """Do whatever is due now."""
        now = self.elapsed()
        if self.kills < self.kills_due() and now >= (self.kills + 1) * self.size.kill_every_s:
            workers.kill_one()
            self.kills += 1
        restart, at = self.broker.restart, self.size.restart_at_s
        if restart is None or at is None:
            return
        if self._stopped_at is None and self.restarts == 0 and now >= at:
            restart[0]()
            self._stopped_at = now
        elif self._stopped_at is not None and now >= self._stopped_at + self.size.outage_s:
            restart[1]()
            self._stopped_at = None
            self.restarts += 1

    def kills_due(self) -> int:
        """One kill every ``kill_every_s`` up to ``kill_for_s`` into the run."""
        return int(self.size.kill_for_s // self.size.kill_every_s)

    def over(self) -> bool:
        """Every kill and restart has happened."""
        restart_due = self.broker.restart is not None and self.size.restart_at_s is not None
        return self.kills >= self.kills_due() and self.restarts >= int(restart_due)


def run_chaos(
    size: ChaosSize,
    broker: Broker,
    *,
    data_dir: Path,
    log: Callable[[str], None] = print,
) -> ChaosReport:
    """One chaos run on ``broker``; the report holds every figure and check."""
    rng = random.Random(size.seed)
    plan = build_plan(size, run=uuid.uuid4().hex[:6])
    collector = EventCollector(broker.broker_url)
    collector.declare()
    args = [item for pair in FAULTS.items() for item in pair]
    with spawned_simulator("--token", TOKEN, "--seed", str(size.seed), *args) as sim:
        env = {
            **WORKER_ENV,
            "SUBSWITCH_VISIBILITY_TIMEOUT": str(size.visibility_s),
            "SUBSWITCH_BROKER_URL": broker.broker_url,
            "SUBSWITCH_STORE_URL": broker.store_url,
            "SUBSWITCH_UPSTREAM_URL": sim.base_url,
            "SUBSWITCH_DATA_DIR": str(data_dir),
        }
        with fleet(env, size, rng) as workers:
            log(f"[chaos] {broker.name}: {len(plan.messages)} messages, {size.workers} workers")
            schedule = _drive(size, broker, plan, collector, workers)
            _quiesce(sim, collector)
            logs = workers.logs()
        observed = Observed(
            events=collector.events,
            writes=sim.admin.writes()["writes"],
            stats=sim.admin.stats(),
            states={
                (t["subscription_id"], t["id"]): bool(t["active"])
                for t in sim.admin.state()["targets"]
                if t["org_id"] == "telco" and t["kind"] == "block"
            },
        )
    collector.close()
    collector.delete()
    report = check(plan, observed)
    report.figures.update(
        broker=broker.name,
        kills=schedule.kills,
        broker_restarts=schedule.restarts,
        wall_s=round(schedule.elapsed(), 1),
        workers=size.workers,
    )
    report.worker_logs = logs
    return report


def _drive(
    size: ChaosSize, broker: Broker, plan: Plan, collector: EventCollector, workers: Fleet
) -> Schedule:
    sender = threading.Thread(
        target=send_all, args=(broker.broker_url, plan, size, size.visibility_s), daemon=True
    )
    schedule = Schedule(size, broker)
    sender.start()
    expected = plan.expected_event_ids()
    while schedule.elapsed() < size.timeout_s:
        schedule.step(workers)
        collector.drain()
        if schedule.over() and not sender.is_alive() and expected <= collector.seen_ids():
            break
        time.sleep(0.2)  # the loop's tick: kills, restarts and draining are all timed
    sender.join(timeout=5)
    return schedule


def _quiesce(sim: SimulatorHandle, collector: EventCollector) -> None:
    # Late writes still land after their command's event; copies may still publish.
    late_s = float(FAULTS["--late-apply-ms"]) / 1000
    deadline = time.monotonic() + late_s + 10
    while time.monotonic() < deadline and sim.admin.stats()["in_flight_now"]:
        time.sleep(0.2)  # waiting for the simulator's last writes
    time.sleep(1.0)  # a last window for stray copies of events
    collector.drain()


# --- make chaos ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run on Redis and RabbitMQ (private servers), print and write the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], action="append")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    options = parser.parse_args(argv)
    brokers = options.broker or ["redis", "rabbitmq"]
    reports: list[ChaosReport] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as data:
        redis_url = stack.enter_context(private_redis())
        for name in brokers:
            redis.Redis.from_url(redis_url).flushall()
            reports.append(run_chaos(FULL, _broker(name, redis_url, stack), data_dir=Path(data)))
            print(render_table(reports[-1:]), flush=True)
            _write(options.results, render_table(reports), reports)
    print(render_table(reports))
    return 0 if all(report.ok for report in reports) else 1


def _broker(name: str, redis_url: str, stack: ExitStack) -> Broker:
    if name == "redis":
        return Broker("redis", f"{redis_url}/1", f"{redis_url}/0")
    node = stack.enter_context(private_rabbitmq())
    return Broker("rabbitmq", node.url, f"{redis_url}/0", (node.stop_app, node.start_app))


def _write(directory: Path, table: str, reports: list[ChaosReport]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "chaos.md").write_text(table + "\n")
    raw = [{**report.figures, "checks": report.checks} for report in reports]
    (directory / "chaos.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    for report in reports:
        if not report.ok:
            print(f"--- worker output ({report.figures['broker']}) ---\n{report.worker_logs}")


if __name__ == "__main__":
    sys.exit(main())
