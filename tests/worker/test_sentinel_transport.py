"""The worker's reliable Redis transport through Sentinel (no Sentinel runs here: the
test checks which transport and channel a Sentinel broker URL gets)."""

from __future__ import annotations

from kombu.transport import redis as kombu_redis

from subswitch.broker import kombu_broker
from worker.redis_transport import Channel, ReliableConnection, SentinelTransport, Transport


def test_a_sentinel_broker_gets_the_reliable_claims_on_kombus_sentinel_channel() -> None:
    # Given the worker's connection class and a Sentinel broker URL
    broker = kombu_broker("redis+sentinel://h1:26379,h2:26379/mymaster/0")
    # When it picks its transport
    connection = ReliableConnection(broker.url, transport_options=broker.transport_options)
    transport = connection.get_transport_cls()
    # Then it is the reliable transport, whose channel claims as the plain one does and
    # finds the master as kombu's Sentinel channel does
    assert transport is SentinelTransport
    assert issubclass(transport.Channel, Channel)
    assert issubclass(transport.Channel, kombu_redis.SentinelChannel)
    # and a plain Redis URL keeps the plain reliable transport
    assert ReliableConnection("redis://127.0.0.1:6379/0").get_transport_cls() is Transport
