"""``subswitch dead`` from the outside: messages a real worker dead-lettered on Redis and
RabbitMQ are listed, shown, replayed (or refused) and purged through the real CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kombu
import pytest
from typer.testing import CliRunner, Result

from producers.events import EventStream
from producers.publisher import CeleryPublisher
from subswitch.broker import COMMANDS_EXCHANGE, is_amqp
from subswitch.cli import app
from subswitch.contract import Lane, Outcome, parse_command
from subswitch.deadletters import open_dead_letter_queue
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.worker.processes import running_worker, wait_until


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with spawned_simulator("--token", "dev-token", "--seed", "7") as handle:
        yield handle


@pytest.fixture(params=["redis", "rabbitmq"])
def urls(request: pytest.FixtureRequest, clean_redis_url: str) -> tuple[str, str]:
    """``(broker_url, store_url)``: Redis for both, or RabbitMQ and Redis."""
    if request.param == "redis":
        return clean_redis_url, clean_redis_url
    amqp_url: str = request.getfixturevalue("clean_amqp_url")
    return amqp_url, clean_redis_url


@pytest.fixture
def env(
    urls: tuple[str, str], simulator: SimulatorHandle, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:  # fmt: skip
    values = {
        "SUBSWITCH_BROKER_URL": urls[0],
        "SUBSWITCH_STORE_URL": urls[1],
        "SUBSWITCH_UPSTREAM_URL": simulator.base_url,
        "SUBSWITCH_UPSTREAM_TOKEN": "dev-token",
        "SUBSWITCH_DATA_DIR": str(tmp_path),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def command(command_id: str, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "type": "ChangeBlockStatus", "schema_version": 1, "command_id": command_id,
        "org_id": "telco", "subscription_id": 61, "block_id": 1, "active": True,
        "reason": "stolen", "issued_at": datetime.now(UTC).isoformat(), "source": "tests",
    }  # fmt: skip
    fields.update(overrides)
    return fields


def publish_task(broker_url: str, task: str, argument: dict[str, Any], task_id: str) -> None:
    """A Celery task message, as a foreign or older producer would send it."""
    with kombu.Connection(broker_url) as connection, connection.Producer() as producer:
        producer.publish(
            json.dumps([[argument], {}, {}]).encode(),
            exchange=COMMANDS_EXCHANGE,
            routing_key=Lane.NORMAL.queue,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"id": task_id, "task": task},
        )


def reject_off_the_lane(broker_url: str, argument: dict[str, Any]) -> None:
    """Publish a command as the SDK does, then reject it off its lane (no requeue): the
    lane's dead-letter exchange moves it, whole, into subswitch.dead."""
    publisher = CeleryPublisher(broker_url=broker_url, visibility_timeout=300,
                                queue_type="quorum")  # fmt: skip
    try:
        publisher.publish(parse_command(argument))
    finally:
        publisher.close()
    with kombu.Connection(broker_url) as connection:
        channel: Any = connection.channel()
        message = channel.basic_get(Lane.NORMAL.queue, no_ack=False)
        assert message is not None
        channel.basic_reject(message.delivery_tag, requeue=False)
        channel.close()


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def dead_letters(broker_url: str) -> list[dict[str, Any]]:
    queue = open_dead_letter_queue(broker_url)
    try:
        return [letter.summary() for letter in queue.letters()]
    finally:
        queue.close()


def test_dead_letters_are_listed_replayed_or_refused_and_purged(
    env: dict[str, str], simulator: SimulatorHandle
) -> None:
    # Given a worker, a valid command sent under a task name it does not know, and a
    # command it cannot validate (block 9)
    broker_url = env["SUBSWITCH_BROKER_URL"]
    simulator.admin.reset(faults=True)
    # ...and on RabbitMQ a command the broker itself dead-lettered (rejected off its lane)
    expected = {"dead-ok", "dead-bad"} | ({"dead-broker"} if is_amqp(broker_url) else set())
    if is_amqp(broker_url):
        reject_off_the_lane(broker_url, command("dead-broker", subscription_id=62))
    with running_worker(env, concurrency=2, lanes="normal") as worker:
        publish_task(broker_url, "subswitch.apply_v0", command("dead-ok"), "dead-ok")
        publish_task(broker_url, "subswitch.apply", command("dead-bad", block_id=9), "dead-bad")
        wait_until(
            lambda: len(dead_letters(broker_url)) == len(expected), timeout=30, what="dead letters"
        )

        # When they are listed (twice: reading takes none away)
        listed = cli("dead", "list", "--json")
        again = cli("dead", "list", "--json")
        # Then both are there, with their command ids and reasons, counted by reason
        assert listed.exit_code == 0, listed.output
        document = json.loads(listed.stdout)
        assert json.loads(again.stdout) == document
        by_id = {letter["command_id"]: letter for letter in document["letters"]}
        assert set(by_id) == expected
        assert "unknown task" in by_id["dead-ok"]["reason"]
        assert "block_id" in by_id["dead-bad"]["reason"]
        assert by_id["dead-ok"]["dead_at"] is not None
        assert sum(document["by_reason"].values()) == len(expected)
        if is_amqp(broker_url):
            assert by_id["dead-broker"]["reason"] == "broker: rejected"
            assert by_id["dead-broker"]["queue"] == Lane.NORMAL.queue
        shown = cli("dead", "show", by_id["dead-ok"]["id"][:8])
        assert '"command_id": "dead-ok"' in shown.stdout, shown.output

        # When the valid one is replayed, then it is applied once and leaves the queue
        with EventStream(broker_url=broker_url) as events:
            replayed = cli("dead", "replay", by_id["dead-ok"]["id"])
            assert replayed.exit_code == 0, replayed.output
            event = events.wait_for({"dead-ok"}, 30).get("dead-ok")
        assert event is not None, worker.log()[-3000:]
        assert event.outcome is Outcome.APPLIED
        assert simulator.admin.target("telco", 61, "block", 1)["active"] is True
        # When the rest are replayed, then the invalid one is refused with its reason and
        # stays (and the broker's own letter, a valid command, is applied)
        with EventStream(broker_url=broker_url) as events:
            refused = cli("dead", "replay", "--all")
            assert refused.exit_code == 1
            assert "refused" in refused.stdout and "block_id" in refused.stdout
            assert [letter["command_id"] for letter in dead_letters(broker_url)] == ["dead-bad"]
            if is_amqp(broker_url):
                outcome = events.wait_for({"dead-broker"}, 30)["dead-broker"].outcome
                assert outcome is Outcome.APPLIED

    # When a purge is asked without --yes and no terminal, then nothing is purged
    unconfirmed = cli("dead", "purge", "--all")
    assert unconfirmed.exit_code == 2
    assert "--yes" in unconfirmed.stderr
    assert len(dead_letters(broker_url)) == 1
    # When it is confirmed, then the queue is empty
    purged = cli("dead", "purge", "--all", "--yes")
    assert purged.exit_code == 0, purged.output
    assert dead_letters(broker_url) == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["dead", "replay"], "give one or more dead letter ids, or --all"),
     (["dead", "purge", "abc", "--all", "--yes"], "not both"),
     (["dead", "show"], "Missing argument")],
)  # fmt: skip
def test_a_dead_command_without_a_choice_is_one_line_and_exit_2(
    args: list[str], fragment: str
) -> None:
    # When a dead command is given neither ids nor --all (or both, or no id to show)
    result = cli(*args)
    # Then it says so in one line and exits 2, before any broker is asked
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert fragment in result.stderr
    assert len(result.stderr.splitlines()) == 1
