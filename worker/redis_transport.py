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
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

# kombu's stubs know little of the Redis transport's internals this builds on.
_KombuChannel: Any = kombu_redis.Channel
_KombuTransport: Any = kombu_redis.Transport
_KombuSentinelChannel: Any = kombu_redis.SentinelChannel
_KombuSentinelTransport: Any = kombu_redis.SentinelTransport
_KombuPublishBatch: Any = kombu_redis.PublishBatch  # type: ignore[attr-defined]

# KEYS: unacked hash, unacked index, then the lists in the order to try; ARGV: now.
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
    if type(info) == 'table' and type(p.delivery_tag) == 'string' then
      redis.call('ZADD', KEYS[2], ARGV[1], p.delivery_tag)
      redis.call('HSET', KEYS[1], p.delivery_tag, '[' .. item .. ','
        .. cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
    end
    redis.call('RPOP', KEYS[i])
    return {KEYS[i], item}
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


class Channel(_KombuChannel):  # type: ignore[misc]
    """A Redis channel whose messages are unacked before they leave the server, and
    whose publish batches look each exchange's bindings up once."""

    #: The bindings read by the publish batch routing a message right now, if any.
    _routing: dict[str, Any] | None = None
    #: The client of :meth:`_create_client`.
    _sync_client: Any = None

    #: Whether the command in flight on the consuming connection is the blocking wait.
    _waiting = False
    #: The last claim found every list empty: block before claiming again.
    _idle = False
    #: The command in flight is kombu's own BRPOP (see :meth:`basic_consume`).
    _plain = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._no_ack_queues: set[str] = set()

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        """kombu's; a queue consumed without acks is never recorded as unacked (nobody
        would ack it, so the restore would deliver it again), so its channel consumes
        as kombu does."""
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _create_client(self, asynchronous: bool = False) -> Any:
        """kombu's client for one command, made once per channel and pool: kombu makes
        a new ``redis.Redis`` for every publish, ack and lookup, and building one
        (its table of reply callbacks) costs more CPU than the command it sends."""
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        cached = self._sync_client
        if cached is None or cached.connection_pool is not pool:
            cached = self._sync_client = super()._create_client()
        return cached

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

    def _deliver_claimed(self, reply: list[bytes]) -> bool:
        key, item = reply
        queue = bytes_to_str(key).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        self.connection._deliver(loads(bytes_to_str(item)), queue)
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
    app's producers: result events, retries)."""

    def get_transport_cls(self) -> Any:
        """The reliable transport for kombu's Redis transports, else kombu's choice."""
        transport_cls = super().get_transport_cls()
        return _RELIABLE.get(transport_cls, transport_cls)

    def Pool(self, limit: int | None = None, **kwargs: Any) -> ConnectionPool:
        """kombu's connection pool, of connections on this transport."""
        return _ReliablePool(self, limit=limit, **kwargs)


class _PooledReliable(PooledConnection, ReliableConnection):  # type: ignore[misc]
    """A connection of the app's pool: kombu's pooled connection, on this transport."""


class _ReliablePool(ConnectionPool):
    """kombu's connection pool; kombu's own makes its connections on kombu's transport."""

    def new(self) -> Any:
        return _PooledReliable(self, **dict(self.connection._info(resolve=False)))


class ReliableAMQP(AMQP):
    """Celery's AMQP helper, with :class:`ReliableConnection` for the app's connections
    (the worker's own: it consumes, and publishes its events as kombu does)."""

    Connection = ReliableConnection

    #: ``Celery(amqp=...)``: the worker's app, by import path.
    PATH: Final = "worker.redis_transport:ReliableAMQP"
