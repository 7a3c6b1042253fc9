"""The worker's sinks map the broker's errors once, to the error tree's PublishError."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from subswitch.broker import dead_letter_queue
from subswitch.errors import PublishError, TransientError
from worker.sinks import KombuDeadLetters, KombuEventSink

SECRET_URL = "redis://:s3cret@127.0.0.1:1/0"


class _RefusingProducer:
    def publish(self, *_: Any, **__: Any) -> None:
        raise OperationalError(f"Error 111 connecting to {SECRET_URL}. Connection refused.")

    def batch(self) -> AbstractContextManager[None]:
        return nullcontext()


class _Pool:
    @contextmanager
    def acquire(self, *, block: bool) -> Iterator[_RefusingProducer]:
        yield _RefusingProducer()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Celery:
    app = Celery("sinks-test", set_as_current=False, broker=SECRET_URL)
    monkeypatch.setattr(Celery, "producer_pool", _Pool())
    return app


def test_an_event_the_broker_refuses_is_a_transient_publish_error(app: Celery) -> None:
    # Given a broker that refuses every publish
    sink = KombuEventSink(app=app)
    # When an event is published
    with pytest.raises(PublishError) as caught:
        sink.publish(b"{}", routing_key="command.applied", event_id="e-1")
    # Then it is one transient error of the tree, naming the event, never the password
    assert isinstance(caught.value, TransientError)
    assert "event e-1" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert isinstance(caught.value.__cause__, OperationalError)


def test_a_dead_letter_the_broker_refuses_is_a_publish_error(app: Celery) -> None:
    # Given a broker that refuses every publish
    letters = KombuDeadLetters(app=app, queue_type="quorum")
    # When a message is dead-lettered / Then it fails as a PublishError
    with pytest.raises(PublishError, match="dead letter"):
        letters.dead_letter(b"x", reason="not JSON", headers={})


def test_a_dead_letter_says_why_and_when_it_was_kept() -> None:
    # Given an in-memory broker and a fixed clock
    app = Celery("sinks-test", broker="memory://", set_as_current=False)
    moment = datetime(2026, 12, 1, 23, 46, 13, tzinfo=UTC)
    letters = KombuDeadLetters(app=app, queue_type="quorum", clock=lambda: moment)
    # When a message is dead-lettered
    letters.dead_letter(b"x", reason="not JSON\n", headers={"command_id": "c-1"})
    # Then it is kept with its command id, its reason on one line and the time
    with app.connection() as connection:
        kept = dead_letter_queue(broker_url="memory://", queue_type="quorum")(
            connection.default_channel
        ).get(no_ack=True)
    assert kept is not None
    assert kept.headers == {"command_id": "c-1", "x-subswitch-reason": "not JSON\\n",
                            "x-subswitch-dead-at": "2026-12-01T23:46:13+00:00"}  # fmt: skip
    app.close()
