"""The workers' live figures in the store: written with a lifetime, read back while fresh."""

from __future__ import annotations

import fakeredis

from subswitch import keys, livestats
from subswitch.livestats import ProcessStats


def test_figures_are_read_back_while_fresh_and_forgotten_after() -> None:
    # Given two processes that reported, one 60 s ago and one 5 s ago
    client = fakeredis.FakeRedis()
    livestats.publish(client, ProcessStats(node="w2", pid=2, writes=9), now=945.0)
    livestats.publish(client, ProcessStats(node="w1", pid=1, writes=3), now=1000.0)
    # When the figures are read at 1005
    found = livestats.read_all(client, now=1005.0)
    # Then only the fresh one is there, with the time it reported
    assert [(stats.node, stats.writes, stats.at) for stats in found] == [("w1", 3, 1000.0)]
    assert client.ttl(keys.process_stats("w1", 1)) == keys.STATS_TTL_S
    assert client.ttl(keys.STATS_INDEX) == keys.STATS_TTL_S
    assert client.zcard(keys.STATS_INDEX) == 1  # the stale entry was pruned


def test_a_record_of_another_shape_is_left_out() -> None:
    # Given an index entry whose record is not a ProcessStats
    client = fakeredis.FakeRedis()
    livestats.publish(client, ProcessStats(node="w1", pid=1), now=1000.0)
    client.set(keys.process_stats("w1", 1), b'{"node": 5}')
    # When the figures are read
    # Then that record is skipped rather than failing the view
    assert livestats.read_all(client, now=1001.0) == []


def test_the_breaker_state_defaults_to_closed_and_an_ended_cool_down_is_half_open() -> None:
    # Given a store without a breaker record
    client = fakeredis.FakeRedis()
    before = livestats.breaker_state(client)
    # When the circuit is open for a minute more, then open with its cool-down over
    seconds, _ = client.time()
    client.hset(keys.BREAKER_STATE, mapping={"state": "open", "until": (seconds + 60) * 1000})
    open_now = livestats.breaker_state(client)
    client.hset(keys.BREAKER_STATE, "until", (seconds - 1) * 1000)
    cooled = livestats.breaker_state(client)
    # Then it reads closed, open, then half-open (the next request probes)
    assert (before, open_now, cooled) == ("closed", "open", "half_open")
