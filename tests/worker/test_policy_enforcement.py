"""Who may send what, from the outside: a real worker with a policy file, the
simulator, a Redis broker; every check reads the events, the dead-letter queue and
the simulator's journal of writes."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import kombu
import pytest
import yaml

from producers.events import EventStream
from producers.publisher import CeleryPublisher
from subswitch.broker import dead_letter_queue
from subswitch.contract import (
    APPLY_BATCH_TASK,
    AnyCommand,
    ChangeBlockStatus,
    ChangeServiceStatus,
    Lane,
    Outcome,
    ResultEvent,
)
from subswitch.signing import CHUNK_SIGNATURE_HEADER
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.conftest import purge_subswitch_queues
from tests.policies import example_document, example_text, signer
from tests.worker.processes import running_worker, wait_until

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with spawned_simulator("--token", "dev-token", "--subscriptions", "100") as handle:
        yield handle


def theft_block(command_id: str, *, active: bool, source: str, lane: Lane) -> AnyCommand:
    return ChangeBlockStatus(
        command_id=command_id,
        org_id="telco",
        subscription_id=7,
        block_id=1,
        active=active,
        source=source,
        priority=lane,
        issued_at=T0,
    )


def service(command_id: str, *, source: str) -> AnyCommand:
    return ChangeServiceStatus(
        command_id=command_id,
        org_id="acme",
        subscription_id=9,
        service_id=3,
        active=True,
        source=source,
        priority=Lane.BULK,
        issued_at=T0,
    )


def first_events(stream: EventStream, wanted: set[str]) -> dict[str, list[ResultEvent]]:
    found: dict[str, list[ResultEvent]] = {}
    for event in stream.iter(timeout=30):
        if event.data.command_id in wanted:
            found.setdefault(event.data.command_id, []).append(event)
        if sum(len(events) for events in found.values()) >= len(wanted) and set(found) == wanted:
            break
    assert set(found) == wanted, f"events only for {sorted(found)}"
    return found


def test_a_producer_can_only_do_what_its_policy_allows(
    clean_redis_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    # Given a worker enforcing the example policy (looked at again only on SIGHUP)
    purge_subswitch_queues(clean_redis_url)
    simulator.admin.reset(faults=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(example_text())
    env = {
        "SUBSWITCH_BROKER_URL": clean_redis_url,
        "SUBSWITCH_STORE_URL": clean_redis_url,
        "SUBSWITCH_UPSTREAM_URL": simulator.base_url,
        "SUBSWITCH_UPSTREAM_TOKEN": "dev-token",
        "SUBSWITCH_DATA_DIR": str(tmp_path),
        "SUBSWITCH_POLICY_FILE": str(policy),
        "SUBSWITCH_POLICY_POLL_SECONDS": "3600",
    }
    publisher = CeleryPublisher(
        broker_url=clean_redis_url, visibility_timeout=300, queue_type="quorum"
    )
    with (
        running_worker(env, concurrency=2, name="policy") as worker,
        EventStream(broker_url=clean_redis_url) as stream,
        closing(publisher),
    ):
        # When billing's key lifts block 1; a forged unblock claims fraud-engine's source
        # and pre-empts the fraud block's id; an unsigned block; then fraud-engine's own
        lift = theft_block("bill-lift", active=False, source="billing", lane=Lane.NORMAL)
        publisher.publish(lift, signature=signer("billing").sign(lift))
        forged = theft_block("fraud-42", active=False, source="fraud-engine", lane=Lane.URGENT)
        publisher.publish(forged, signature=signer("billing").sign(forged))
        unsigned = theft_block("anon-1", active=True, source="fraud-engine", lane=Lane.URGENT)
        publisher.publish(unsigned)
        events = first_events(stream, {"bill-lift", "fraud-42", "anon-1"})
        real = theft_block("fraud-42", active=True, source="fraud-engine", lane=Lane.URGENT)
        publisher.publish(real, signature=signer("fraud-engine").sign(real))
        [applied] = first_events(stream, {"fraud-42"})["fraud-42"]

        # Then the three are rejected, each naming its rule, and dead-lettered with it
        reasons = {cid: found[0].data.error.message for cid, found in events.items()}  # type: ignore[union-attr]
        assert {cid: found[0].outcome for cid, found in events.items()} == dict.fromkeys(
            reasons, Outcome.REJECTED
        )
        assert reasons["bill-lift"].startswith("policy: not allowed: no rule of producer 'billing'")
        assert reasons["fraud-42"].startswith("policy: source: signed by 'billing'")
        assert reasons["anon-1"].startswith("policy: unsigned")
        with kombu.Connection(clean_redis_url) as connection:
            dead = dead_letter_queue(broker_url=clean_redis_url, queue_type="quorum")(
                connection.default_channel
            )
            letters = [dead.get(no_ack=True) for _ in range(3)]
        assert {m.headers["x-subswitch-reason"] for m in letters if m} == set(reasons.values())
        # and the real fraud block, under the id the forgery tried to take, is applied
        assert applied.outcome == Outcome.APPLIED
        # and only it reached the upstream
        writes = simulator.admin.writes()["writes"]
        assert [w["idempotency_key"] for w in writes] == ["fraud-42"]
        simulator.admin.reset()

        # When a batch job's chunk arrives whose commands' own signatures are garbage but
        # whose chunk signature is good, and one of its commands is a block
        chunk = [service(f"batch-{n}", source="batch:nightly") for n in range(3)]
        chunk.append(theft_block("batch-x", active=True, source="batch:nightly", lane=Lane.BULK))
        bodies = [{**c.model_dump(mode="json"), "signature": "garbage"} for c in chunk]
        header = {CHUNK_SIGNATURE_HEADER: signer("batch:*").sign_chunk(chunk)}
        publisher._send(APPLY_BATCH_TASK, bodies, "chunk-1", Lane.BULK.queue, headers=header)
        outcomes = first_events(stream, {c.command_id for c in chunk})
        # Then the chunk was verified once, by its header, and each command by its rules
        assert {cid: found[0].outcome for cid, found in outcomes.items()} == {
            "batch-0": Outcome.APPLIED,
            "batch-1": Outcome.APPLIED,
            "batch-2": Outcome.APPLIED,
            "batch-x": Outcome.REJECTED,
        }

        # When the policy is changed to let billing lift block 1, and the worker gets SIGHUP
        document = example_document()
        document["producers"]["billing"]["rules"].append({"block_ids": [1], "active": False})
        policy.write_text(yaml.safe_dump(document))
        worker.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: worker.log().count("policy reloaded (SIGHUP)") == worker.consumers,
            timeout=10,
            what="each Celery worker to reload its policy",
        )
        again = theft_block("bill-lift-2", active=False, source="billing", lane=Lane.NORMAL)
        again = again.model_copy(update={"issued_at": T0 + timedelta(minutes=1)})
        publisher.publish(again, signature=signer("billing").sign(again))
        [reloaded] = first_events(stream, {"bill-lift-2"})["bill-lift-2"]
    # Then the new policy is in force without a restart
    assert reloaded.outcome == Outcome.APPLIED, worker.log()[-3000:]
