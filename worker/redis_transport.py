"""kombu's Redis transport, made safe against a consumer killed mid-delivery.

kombu takes a message off its list with ``BRPOP`` and only afterwards, in a second
round trip, records it as unacked (the hash and index its visibility-timeout restore
reads). A worker SIGKILLed between the two (the reply may sit unread in its socket)
takes the message with it, and nothing ever brings it back.

Here a message leaves its list only inside one Lua script that records it as unacked
first: from then on the restore brings it back if its consumer dies. Waiting stays a
blocking command driven by kombu's event loop, on the same connection: when a claim
finds every list empty, the channel blocks on its first queue's list with
``BLMOVE key key RIGHT RIGHT`` (which moves the tail onto itself, so it wakes on a
message without taking it), then claims again. The other lists (further queues, other
priorities) are looked at on every claim, at the latest ``brpop_timeout`` seconds
(1 s) after they fill, so an idle worker picks up a bulk command after a second at
most, and one of its first queue at once. Everything else (publishing, acks, rejects,
the visibility-timeout restore) is kombu's own, but for one saving: a publish batch
(``Producer.batch``, the bulk lane's events) reads an exchange's bindings once, not
once per message.

Two of kombu's costs are spared on the way, the guarantees unchanged: a message the
claim recorded as unacked is not recorded a second time (kombu's ``QoS.append`` would
JSON-encode it again and write the same hash field and index entry in one more
transaction), and the synchronous client (publishing, acks) is one per channel and
pool instead of a new ``redis.Redis`` per call (building one costs about as much as a
round trip).

Only the worker's Celery app uses this transport (:class:`ReliableAMQP`); producers
only ``LPUSH`` and keep kombu's.
"""

from __future__ import annotations

from queue import Empty
from time import monotonic, time
from typing import Any, Final

from celery.app.amqp import AMQP
from kombu import Connection
from kombu.connection import ConnectionPool, PooledConnection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

# kombu's stubs know little of the Redis transport's internals this builds on.
_KombuChannel: Any = kombu_redis.Channel
_KombuTransport: Any = kombu_redis.Transport
_KombuSentinelChannel: Any = kombu_redis.SentinelChannel
_KombuSentinelTransport: Any = kombu_redis.SentinelTransport
_KombuPublishBatch: Any = kombu_redis.PublishBatch  # type: ignore[attr-defined]
_KombuPooledConnection: Any = PooledConnection

# KEYS: unacked hash, unacked index, then the lists in the order to try; ARGV: now.
# Replies the list, the item and 1 if the item was recorded as unacked (else 0).
# The message is recorded before it is popped: a script stopped by an error (a full
# server refuses ZADD/HSET) leaves it in its list, never half-moved. The record is the
# raw item spliced in, not re-encoded, so the message comes back byte for byte; an
# item that is no kombu message is handed out unrecorded, as kombu itself does.
CLAIM_SCRIPT: Final = """
for i = 3, #KEYS do
  local item = redis.call('LINDEX', KEYS[i], -1)
  if item then
    local ok, m = pcall(cjson.decode, item)
    local p = ok and type(m) == 'table' and m.properties
    local info = type(p) == 'table' and p.delivery_info
    local recorded = 0
    if type(info) == 'table' and type(p.delivery_tag) == 'string' then
      redis.call('ZADD', KEYS[2], ARGV[1], p.delivery_tag)
      redis.call('HSET', KEYS[1], p.delivery_tag, '[' .. item .. ','
        .. cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
      recorded = 1
    end
    redis.call('RPOP', KEYS[i])
    return {KEYS[i], item, recorded}
  end
end
return false
"""


class _RoutedOnce(_KombuPublishBatch):  # type: ignore[misc]
    """kombu's publish batch (its messages' LPUSHes in one pipeline) that also reads
    each exchange's bindings once per batch instead of once per message: a batch is
    delivered as if published at the instant of its first lookup."""

    def __init__(self, channel: Channel, max_size: int) -> None:
        super().__init__(channel, max_size)
        self.tables: dict[str, Any] = {}

    def publish(self, message: Any, **kwargs: Any) -> Any:
        self.channel._routing = self.tables
        try:
            return super().publish(message, **kwargs)
        finally:
            self.channel._routing = None


_KombuQoS: Any = kombu_redis.QoS
_VirtualQoS: Any = kombu_virtual.QoS


class QoS(_KombuQoS):  # type: ignore[misc]
    """kombu's Redis QoS, which leaves a message the claim recorded as it is."""

    def append(self, message: Any, delivery_tag: str) -> None:
        """Track ``message`` as unacked; record it in Redis unless the claim did."""
        recorded: set[str] | None = getattr(self.channel, "_recorded", None)
        if recorded is not None and delivery_tag in recorded:
            recorded.discard(delivery_tag)
            # The virtual QoS's bookkeeping only: the hash field and the index entry
            # kombu would write are there already, from the claim's own script.
            _VirtualQoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)


class Channel(_KombuChannel):  # type: ignore[misc]
    """A Redis channel whose messages are unacked before they leave the server, and
    whose publish batches look each exchange's bindings up once."""

    #: The bindings read by the publish batch routing a message right now, if any.
    _routing: dict[str, Any] | None = None

    QoS = QoS

    #: Whether the command in flight on the consuming connection is the blocking wait.
    _waiting = False
    #: The last claim found every list empty: block before claiming again.
    _idle = False
    #: The command in flight is kombu's own BRPOP (see :meth:`basic_consume`).
    _plain = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before kombu's set-up, which may already consume.
        self._recorded: set[str] = set()
        self._sync_client: Any = None
        super().__init__(*args, **kwargs)
        self._no_ack_queues: set[str] = set()

    def _create_client(self, asynchronous: bool = False) -> Any:
        """kombu's client; the synchronous one kept while its pool lasts (a
        ``redis.Redis`` may be shared: each command borrows a pooled connection)."""
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        """kombu's; a queue consumed without acks is never recorded as unacked (nobody
        would ack it, so the restore would deliver it again), so its channel consumes
        as kombu does."""
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def create_publish_batch(self, max_size: int) -> _RoutedOnce:
        """kombu's publish batch, routing each exchange's messages by one lookup."""
        return _RoutedOnce(self, max_size)

    def get_table(self, exchange: str) -> Any:
        """An exchange's bindings (``SMEMBERS``), read once per publish batch."""
        tables = self._routing
        if tables is None:
            return super().get_table(exchange)
        if exchange not in tables:
            tables[exchange] = super().get_table(exchange)
        return tables[exchange]

    def _claim_keys(self, queues: list[str]) -> list[str]:
        lists = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        return [self.unacked_key, self.unacked_index_key, *lists]

    def _brpop_start(self, timeout: float | None = None) -> None:
        self._plain = bool(self._no_ack_queues.intersection(self.active_queues))
        queues = self._queue_cycle.consume(len(self.active_queues))
        if self._plain:
            super()._brpop_start(timeout)
            return
        if not queues:
            return
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        self._waiting = self._idle
        if self._waiting:
            first = self._q_for_pri(self.active_queues[0], 0)
            wait_s = self.brpop_timeout if timeout is None else timeout
            connection.send_command("BLMOVE", first, first, "RIGHT", "RIGHT", wait_s or 0)
        else:
            keys = self._claim_keys(queues)
            connection.send_command("EVAL", CLAIM_SCRIPT, len(keys), *keys, time())

    def _brpop_read(self, **options: Any) -> bool:
        if self._plain:
            return super()._brpop_read(**options)  # type: ignore[no-any-return]
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "EVAL", **options)
            except self.connection_errors:
                # As kombu: drop the connection so the next poll reconnects.
                self.client.connection.disconnect()
                raise
            self._idle = not self._waiting and not reply
            if self._waiting or not reply:
                raise Empty()
            return self._deliver_claimed(reply)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _deliver_claimed(self, reply: list[Any]) -> bool:
        key, item, recorded = reply
        queue = bytes_to_str(key).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        message = loads(bytes_to_str(item))
        tag = message["properties"]["delivery_tag"] if int(recorded) else None
        if tag is not None:
            self._recorded.add(tag)
        try:
            self.connection._deliver(message, queue)
        finally:
            # Appended by now, or never to be: nothing is left waiting for the tag.
            if tag is not None:
                self._recorded.discard(tag)
        return True


class Transport(_KombuTransport):  # type: ignore[misc]
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


class SentinelChannel(Channel, _KombuSentinelChannel):  # type: ignore[misc]
    """:class:`Channel`'s claims, on the master kombu's Sentinel channel finds."""


class SentinelTransport(_KombuSentinelTransport):  # type: ignore[misc]
    """kombu's Redis Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel


#: kombu's Redis transports, and the reliable one each is replaced with.
_RELIABLE: Final[dict[Any, Any]] = {
    kombu_redis.Transport: Transport,
    kombu_redis.SentinelTransport: SentinelTransport,
}


class ReliableConnection(Connection):
    """A kombu connection that uses :class:`Transport` (:class:`SentinelTransport`)
    where kombu would use its Redis (Redis Sentinel) transport: the URL is parsed as
    kombu does (TLS for ``rediss://``, the socket of ``redis+socket://``), and shown
    as kombu does; only the class differs. So do the connections of its pool (the
    app's producers: events and dead letters are published through them)."""

    def get_transport_cls(self) -> Any:
        """The reliable transport for kombu's Redis transports, else kombu's choice."""
        return _reliable(super().get_transport_cls())

    def Pool(self, limit: int | None = None, **kwargs: Any) -> ReliableConnectionPool:
        """kombu's pool of connections, each of them like this one."""
        return ReliableConnectionPool(self, limit=limit, **kwargs)


class ReliablePooledConnection(_KombuPooledConnection):  # type: ignore[misc]
    """A connection of :class:`ReliableConnectionPool`: kombu's, with the reliable
    transport (as :class:`ReliableConnection`)."""

    def get_transport_cls(self) -> Any:
        """The reliable transport for kombu's Redis transports, else kombu's choice."""
        return _reliable(super().get_transport_cls())


class ReliableConnectionPool(ConnectionPool):
    """kombu's connection pool, of :class:`ReliablePooledConnection` s."""

    def new(self) -> Connection:
        """A new connection, configured as the pool's own."""
        return ReliablePooledConnection(self, **dict(self.connection._info(resolve=False)))


def _reliable(transport_cls: Any) -> Any:
    return _RELIABLE.get(transport_cls, transport_cls)


class ReliableAMQP(AMQP):
    """Celery's AMQP helper, with :class:`ReliableConnection` for the app's connections
    (the worker's own: it consumes, and publishes its events as kombu does)."""

    Connection = ReliableConnection

    #: ``Celery(amqp=...)``: the worker's app, by import path.
    PATH: Final = "worker.redis_transport:ReliableAMQP"
