"""``CommandProducer.status`` and the acceptance the SDK records when it has the store."""

from __future__ import annotations

import logging
from pathlib import Path

import fakeredis
import pytest

from producers import CommandProducer, CommandState, InMemoryPublisher
from producers.producer import store_for
from subswitch.settings import Settings
from subswitch.status import open_store


def test_a_sent_command_is_queued_until_a_worker_takes_it() -> None:
    # Given a producer with the store
    store = fakeredis.FakeRedis()
    producer = CommandProducer(publisher=InMemoryPublisher(), store=store)
    # When a command is sent
    command_id = producer.change_block_status(
        org_id="telco", subscription_id=7, block_id=1, active=True, source="fraud-engine"
    )
    # Then its status is queued, and an id never sent is unknown
    assert producer.status(command_id).state is CommandState.QUEUED
    assert producer.status("never-sent").state is CommandState.UNKNOWN


def test_a_store_that_fails_after_the_broker_took_the_command_does_not_fail_the_send(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a producer whose store does not answer
    publisher = InMemoryPublisher()
    producer = CommandProducer(publisher=publisher, store=open_store("redis://127.0.0.1:1/0"))
    # When a command is sent
    with caplog.at_level(logging.WARNING):
        command_id = producer.change_service_status(
            org_id="telco", subscription_id=7, service_id=2, active=False, source="billing"
        )
    # Then it is enqueued, and the missing acceptance is logged
    assert len(publisher.sent) == 1
    assert f"{command_id}: enqueued; acceptance not recorded" in caplog.text


def test_the_store_comes_from_the_settings(tmp_path: Path) -> None:
    # Given a fleet's broker URL with and without the store URL
    broker = "redis://127.0.0.1:1/0"
    with_store = Settings(broker_url=broker, store_url="redis://127.0.0.1:1/1", data_dir=tmp_path)
    without = Settings(broker_url=broker, data_dir=tmp_path)
    # When the producer's store is chosen / Then only the first has one
    client = store_for(with_store)
    assert client is not None and client.connection_pool.connection_kwargs["db"] == 1
    assert store_for(without) is None
