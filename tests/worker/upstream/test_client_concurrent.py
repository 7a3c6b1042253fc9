"""The client's ``start_*`` writes: in flight together through the concurrent sender,
and answered exactly as the synchronous ``change_*`` writes are."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from subswitch.simulator.accounts import generate_service_account
from subswitch.simulator.config import SimulatorConfig
from subswitch.simulator.testing import SimulatorHandle, running_simulator
from tests.worker.upstream.conftest import (
    DEFAULTS,
    TOKEN,
    ClientFactory,
    answer,
    new_client,
)
from tests.worker.upstream.scripted import (
    Reply,
    Script,
    ScriptedUpstream,
    all_at_once,
    closed_port_url,
)
from worker.upstream import (
    AuthenticationError,
    InvalidRequestError,
    MasStackClient,
    StaticToken,
    TokenProvider,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamPermanentError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from worker.upstream.client import PendingWrite
from worker.upstream.concurrent import DEFAULT_IN_FLIGHT

NOW = 1_700_000_000.0
ERROR_BODY = {
    "code": 1002,
    "status": "Bad Request",
    "message": "Service not changeable",
    "detailMsg": "service 4 of subscription 7 cannot be switched",
}
ClientMaker = Callable[..., MasStackClient]
Change = Callable[..., int]
Start = Callable[..., PendingWrite]


@pytest.fixture
def make(upstream: ScriptedUpstream) -> Iterator[ClientMaker]:
    """Clients with a sender, talking to ``upstream`` unless told otherwise."""
    made: list[MasStackClient] = []

    def make_client(**kwargs: Any) -> MasStackClient:
        options: dict[str, Any] = {
            "base_url": upstream.base_url,
            "auth": StaticToken(SecretStr(TOKEN)),
            "clock": lambda: NOW,
            # The default connector's TLS context costs 50 ms a client; no test needs it.
            "connector": plain_connector,
            **kwargs,
        }
        made.append(new_client(**options))
        return made[-1]

    yield make_client
    for client in made:
        client.close()


def plain_connector(in_flight: int) -> aiohttp.BaseConnector:
    return aiohttp.TCPConnector(limit=in_flight)


def block_on(client: MasStackClient, **kwargs: Any) -> int:
    return client.change_block_status("telco", 7, 1, **{**BLOCK_ARGS, **kwargs})


def start_block_on(client: MasStackClient, **kwargs: Any) -> PendingWrite:
    return client.start_change_block_status("telco", 7, 1, **{**BLOCK_ARGS, **kwargs})


def service_off(client: MasStackClient, **kwargs: Any) -> int:
    return client.change_service_status("telco", 7, 4, **{**SERVICE_ARGS, **kwargs})


def start_service_off(client: MasStackClient, **kwargs: Any) -> PendingWrite:
    return client.start_change_service_status("telco", 7, 4, **{**SERVICE_ARGS, **kwargs})


BLOCK_ARGS: dict[str, Any] = {
    "active": True,
    "reason": "Lo ha perdido",
    "idempotency_key": "cmd-1",
    "request_id": "req-1",
}
SERVICE_ARGS: dict[str, Any] = {"active": False, "idempotency_key": "cmd-2", "request_id": "req-2"}
WRITES = [
    pytest.param(block_on, start_block_on, id="block"),
    pytest.param(service_off, start_service_off, id="service"),
]
#: Every header the API needs on a write, as the synchronous client sends it.
WRITE_HEADERS = {
    "authorization": f"Bearer {TOKEN}",
    "accept": "application/json",
    "content-type": "application/json",
    "user-agent": "subswitch-worker",
    "x-auth-roles": DEFAULTS.auth_roles,
}


def outcome(call: Callable[[], int]) -> tuple[Any, ...]:
    """What a write came to: its status, or its error's kind and every field of it."""
    try:
        return ("status", call())
    except UpstreamError as exc:
        fields = ("retry_after", "maybe_applied", "error")
        return (type(exc), str(exc), exc.status, *(getattr(exc, f, None) for f in fields))


def summary(result: tuple[Any, ...]) -> tuple[Any, ...]:
    """An outcome without its message and ErrorMessage: the kind, status, retry_after
    and maybe_applied."""
    return result if result[0] == "status" else result[:1] + result[2:5]


def sender_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "upstream-sender"}


@pytest.mark.parametrize(("change", "start"), WRITES)
def test_a_started_write_is_the_same_request_as_the_synchronous_one(
    upstream: ScriptedUpstream, make: ClientMaker, change: Change, start: Start
) -> None:
    # Given a client with a sender, and an upstream that accepts every write
    client = make()
    # When the same write is made synchronously, then started and answered
    assert change(client) == 201
    assert start(client).result() == 201
    # Then the upstream saw the same request twice, with every header the API needs
    synchronous, started = upstream.seen
    assert (started.method, started.path, started.body) == (
        synchronous.method,
        synchronous.path,
        synchronous.body,
    )
    expected = {**WRITE_HEADERS, "idempotency-key": "cmd-1", "x-request-id": "req-1"}
    if change is service_off:
        expected |= {"idempotency-key": "cmd-2", "x-request-id": "req-2"}
    for name, value in expected.items():
        assert started.headers.get(name) == synchronous.headers.get(name) == value, name


@pytest.mark.parametrize(
    ("start", "path", "body"),
    [
        (
            start_block_on,
            "/v2/orgs/telco/subscriptions/7/blocks/1",
            {"active": True, "reason": "Lo ha perdido"},
        ),
        (start_service_off, "/v2/orgs/telco/subscriptions/7/services/4", {"active": False}),
    ],
    ids=["block", "service"],
)
def test_a_started_write_patches_its_target_with_its_status(
    upstream: ScriptedUpstream, make: ClientMaker, start: Start, path: str, body: Any
) -> None:
    # Given a client with a sender
    client = make()
    # When a write is started without a request id
    assert start(client, request_id=None).result() == 201
    # Then it patched the target's path with the JSON status, under a fresh request id
    (seen,) = upstream.seen
    assert (seen.method, seen.path, json.loads(seen.body)) == ("PATCH", path, body)
    assert re.fullmatch(r"[0-9a-f-]{36}", seen.headers["x-request-id"])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(201), ("status", 201)),
        (Reply(204), ("status", 204)),
        (Reply(200, body=b"<html>done</html>"), ("status", 200)),
        (
            Reply(400, {"Content-Type": "application/json"}, json.dumps(ERROR_BODY).encode()),
            (UpstreamPermanentError, 400, None, None),
        ),
        (Reply(404), (UpstreamPermanentError, 404, None, None)),
        (Reply(409, body=b"not json"), (UpstreamPermanentError, 409, None, None)),
        (Reply(403), (AuthenticationError, 403, None, None)),
        (Reply(302, {"Location": "/v2/else"}), (UpstreamPermanentError, 302, None, None)),
        (Reply(501), (UpstreamPermanentError, 501, None, None)),
        (Reply(503, {"Retry-After": "7"}), (UpstreamUnavailable, 503, 7.0, False)),
        (
            Reply(429, {"Retry-After": formatdate(NOW + 30, usegmt=True)}),
            (UpstreamUnavailable, 429, 30.0, False),
        ),
        (Reply(500), (UpstreamUnavailable, 500, None, True)),
    ],
    ids=lambda value: str(value.status) if isinstance(value, Reply) else "",
)
def test_a_started_write_is_answered_as_the_synchronous_one(
    upstream: ScriptedUpstream, make: ClientMaker, reply: Reply, expected: tuple[Any, ...]
) -> None:
    # Given an upstream that answers every write with `reply` (whatever its target)
    upstream.script = lambda _: reply
    client = make()
    # When the same write is made synchronously, then started and answered
    synchronous = outcome(lambda: block_on(client))
    started = outcome(lambda: start_block_on(client).result())
    # Then both come to the same status, or the same error field by field
    assert started == synchronous
    assert summary(started) == expected
    assert len(upstream.seen) == 2


def test_an_error_message_body_is_parsed_on_a_started_write(
    upstream: ScriptedUpstream, make: ClientMaker
) -> None:
    # Given an upstream that refuses the change with an ErrorMessage
    upstream.script = lambda _: Reply(400, body=json.dumps(ERROR_BODY).encode())
    client = make()
    # When a write is started and answered
    with pytest.raises(UpstreamPermanentError) as caught:
        start_service_off(client).result()
    # Then the error carries the upstream's fields
    error = caught.value.error
    assert error is not None
    assert (error.code, error.message) == (1002, "Service not changeable")
    assert "Service not changeable" in str(caught.value)


class RotatingTokens:
    """A TokenProvider handing out tok-1, tok-2... and recording invalidations."""

    def __init__(self) -> None:
        self.generation = 1
        self.invalidated: list[str] = []

    def token(self) -> str:
        return f"tok-{self.generation}"

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)
        if token == self.token():
            self.generation += 1


def refusing(*tokens: str) -> Script:
    refused = {f"Bearer {token}" for token in tokens}
    return lambda seen: Reply(401) if seen.headers.get("authorization") in refused else Reply(201)


def test_a_401_refreshes_the_token_once_and_repeats_the_write(
    upstream: ScriptedUpstream, make: ClientMaker
) -> None:
    # Given an upstream that refuses tok-1 and accepts tok-2
    upstream.script = refusing("tok-1")
    tokens = RotatingTokens()
    client = make(auth=tokens)
    # When a write is started and answered
    status = start_block_on(client).result()
    # Then the refused token was invalidated and the same write repeated with the new one
    assert status == 201
    assert tokens.invalidated == ["tok-1"]
    first, second = upstream.seen
    assert first.headers["authorization"] == "Bearer tok-1"
    assert second.headers["authorization"] == "Bearer tok-2"
    assert (second.method, second.path, second.body) == (first.method, first.path, first.body)
    for name in ("idempotency-key", "x-request-id", "x-auth-roles", "content-type", "user-agent"):
        assert second.headers[name] == first.headers[name], name


def test_a_second_401_is_an_authentication_error(
    upstream: ScriptedUpstream, make: ClientMaker
) -> None:
    # Given an upstream that refuses every token
    upstream.script = lambda _: Reply(401)
    client = make(auth=RotatingTokens())
    # When a write is started and answered
    with pytest.raises(AuthenticationError) as caught:
        start_block_on(client).result()
    # Then it was sent twice (one refresh) and the error says so
    assert caught.value.status == 401
    assert "after one token refresh" in str(caught.value)
    assert len(upstream.seen) == 2


def test_a_401_with_a_static_token_is_not_repeated(
    upstream: ScriptedUpstream, make: ClientMaker
) -> None:
    # Given an upstream that refuses the static token
    upstream.script = lambda _: Reply(401)
    client = make()
    # When a write is started and answered
    with pytest.raises(AuthenticationError) as caught:
        start_block_on(client).result()
    # Then it was sent once, and the error says why without quoting the token
    assert "cannot be refreshed" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert len(upstream.seen) == 1


@pytest.mark.parametrize(
    ("start", "field"),
    [
        (lambda c: c.start_change_block_status("a/b", 7, 1, **BLOCK_ARGS), "org_id"),
        (lambda c: c.start_change_block_status("telco", 0, 1, **BLOCK_ARGS), "subscription_id"),
        (lambda c: c.start_change_block_status("telco", 7, 3, **BLOCK_ARGS), "block_id"),
        (lambda c: c.start_change_service_status("telco", 7, -1, **SERVICE_ARGS), "service_id"),
        (lambda c: start_service_off(c, active="yes"), "active"),
        (lambda c: start_block_on(c, reason="x" * 10_000), "reason"),
        (lambda c: start_block_on(c, idempotency_key="two words"), "idempotency_key"),
        (lambda c: start_block_on(c, request_id="bad\nid"), "request_id"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_bad_input_is_refused_when_the_write_is_started(
    upstream: ScriptedUpstream, make: ClientMaker, start: Start, field: str
) -> None:
    # Given a client with a sender
    client = make()
    # When a write is started with one bad argument
    with pytest.raises(InvalidRequestError) as caught:
        start(client)
    # Then it is refused at once, naming the field...
    assert field in str(caught.value)
    # ...and nothing left: the next good write is the only request the upstream saw
    assert start_block_on(client).result() == 201
    assert len(upstream.seen) == 1


def test_a_token_failure_is_raised_when_the_write_is_started(
    upstream: ScriptedUpstream, make: ClientMaker
) -> None:
    # Given a token provider whose token endpoint is down
    class Down:
        def token(self) -> str:
            raise UpstreamUnavailable("token endpoint answered 503", status=503)

        def invalidate(self, token: str) -> None:
            pass

    provider: TokenProvider = Down()
    client = make(auth=provider)
    # When a write is started / Then the failure comes at once and nothing was sent
    with pytest.raises(UpstreamUnavailable):
        start_block_on(client)
    assert upstream.seen == []


def test_start_returns_before_the_answer(upstream: ScriptedUpstream, make: ClientMaker) -> None:
    # Given a client made with concurrent=True, and an upstream that holds every write
    # until the test lets it go
    upstream.script = upstream.held()
    client = make(connector=None, concurrent=True)
    # When a write is started
    pending = start_block_on(client)
    # Then it is on its way while start has returned, and is answered once let go
    assert upstream.wait_for_requests(1)
    upstream.release.set()
    assert pending.result() == 201


def test_started_writes_are_in_flight_together(
    upstream: ScriptedUpstream, make: ClientMaker
) -> None:
    # Given an upstream that answers 201 only once five writes are open at once
    upstream.script = all_at_once(5)
    client = make()
    # When five writes are started from this one thread, then answered
    pending = [start_block_on(client, idempotency_key=f"cmd-{n}") for n in range(5)]
    # Then all five are applied (made one by one, they would get 500)
    assert [write.result() for write in pending] == [201] * 5
    keys = sorted(seen.headers["idempotency-key"] for seen in upstream.seen)
    assert keys == [f"cmd-{n}" for n in range(5)]


def test_a_deadline_passing_in_flight_is_a_timeout_maybe_applied(
    upstream: ScriptedUpstream, make: ClientMaker
) -> None:
    # Given an upstream that holds every write
    upstream.script = upstream.held()
    client = make()
    # When a write is started with a short deadline and answered
    with pytest.raises(UpstreamTimeout) as caught:
        start_block_on(client, deadline=time.monotonic() + 0.3).result()
    # Then it was sent, so it may have been applied
    assert upstream.wait_for_requests(1)
    assert caught.value.maybe_applied is True


@pytest.mark.parametrize(("change", "start"), WRITES)
def test_a_deadline_already_passed_is_a_timeout_never_sent(
    upstream: ScriptedUpstream, make: ClientMaker, change: Change, start: Start
) -> None:
    # Given a client with a sender and a deadline in the past
    client = make()
    deadline = time.monotonic() - 1
    # When the write is made synchronously, then started and answered
    synchronous = outcome(lambda: change(client, deadline=deadline))
    started = outcome(lambda: start(client, deadline=deadline).result())
    # Then both are the same timeout, surely not applied, and nothing was sent
    assert started == synchronous
    assert summary(started) == (UpstreamTimeout, None, None, False)
    assert start(client).result() == 201
    assert len(upstream.seen) == 1


@pytest.mark.parametrize(("change", "start"), WRITES)
def test_a_refused_connection_is_as_for_the_synchronous_write(
    make: ClientMaker, change: Change, start: Start
) -> None:
    # Given a client of an upstream that does not listen
    client = make(base_url=closed_port_url())
    # When the write is made synchronously, then started and answered
    synchronous = outcome(lambda: change(client))
    started = outcome(lambda: start(client).result())
    # Then both are connection errors that surely were not applied
    assert summary(started) == summary(synchronous) == (UpstreamConnectionError, None, None, False)


@pytest.mark.parametrize(("change", "start"), WRITES)
def test_a_hang_up_is_as_for_the_synchronous_write(
    upstream: ScriptedUpstream, make: ClientMaker, change: Change, start: Start
) -> None:
    # Given an upstream that reads each write and hangs up without answering
    upstream.script = lambda _: None
    client = make()
    # When the write is made synchronously, then started and answered
    synchronous = outcome(lambda: change(client))
    started = outcome(lambda: start(client).result())
    # Then both are connection errors that may have been applied
    assert summary(started) == summary(synchronous) == (UpstreamConnectionError, None, None, True)


def test_without_a_sender_start_writes_at_once(make_client: ClientFactory) -> None:
    # Given a client made without concurrent= or connector=
    client, recorder = make_client(answer(201))
    # When a write is started
    pending = start_block_on(client)
    # Then the request was already made, and the answer is its status
    assert len(recorder.requests) == 1
    assert recorder.last.headers["Idempotency-Key"] == "cmd-1"
    assert pending.result() == 201


def test_without_a_sender_start_raises_the_error_at_once(make_client: ClientFactory) -> None:
    # Given a client without a sender and an upstream answering 503
    client, _ = make_client(answer(503, headers={"Retry-After": "4"}))
    # When a write is started / Then the synchronous write's error comes from start
    with pytest.raises(UpstreamUnavailable) as caught:
        start_block_on(client)
    assert (caught.value.status, caught.value.retry_after) == (503, 4.0)


def test_a_connector_factory_makes_the_sender_connections(
    upstream: ScriptedUpstream, make: ClientMaker
) -> None:
    # Given a client given a connector factory (and not concurrent=True)
    asked: list[int] = []

    def connector(in_flight: int) -> aiohttp.BaseConnector:
        asked.append(in_flight)
        return aiohttp.TCPConnector(limit=in_flight)

    upstream.script = upstream.held()
    client = make(connector=connector)
    # When a write is started
    pending = start_block_on(client)
    # Then it is in flight through the factory's connector before being answered
    assert upstream.wait_for_requests(1)
    upstream.release.set()
    assert pending.result() == 201
    assert asked == [DEFAULT_IN_FLIGHT]


def test_closing_the_client_stops_its_sender_thread(
    upstream: ScriptedUpstream, make: ClientMaker
) -> None:
    # Given a client that has started a write (so its sender's loop runs)
    before = sender_threads()
    client = make()
    assert start_block_on(client).result() == 201
    (thread,) = sender_threads() - before
    # When the client is closed
    client.close()
    # Then the sender's loop thread has ended
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    account: Path = generate_service_account(tmp_path_factory.mktemp("sa") / "account.json")
    config = SimulatorConfig(service_account_files=(account,), seed=7)
    with running_simulator(config) as handle:
        yield handle


@pytest.fixture
def sim(simulator: SimulatorHandle) -> Iterator[SimulatorHandle]:
    simulator.admin.reset(faults=True)
    yield simulator
    simulator.admin.reset(faults=True)


@pytest.fixture
def sim_client(sim: SimulatorHandle, make: ClientMaker) -> MasStackClient:
    return make(base_url=sim.base_url, auth=StaticToken(SecretStr("dev-token")))


def test_started_writes_are_applied_by_the_simulator(
    sim: SimulatorHandle, sim_client: MasStackClient
) -> None:
    # Given the simulator in its seed state (blocks lifted, voice active)
    # When a block and a service change are started together, then answered
    block = start_block_on(sim_client)
    service = sim_client.start_change_service_status(
        "telco", 7, 1, active=False, idempotency_key="cmd-3", request_id="req-3"
    )
    # Then both are applied, with our keys, request ids, roles and bodies
    assert (block.result(), service.result()) == (201, 201)
    assert sim.admin.target("telco", 7, "block", 1)["reason"] == "Lo ha perdido"
    assert sim.admin.target("telco", 7, "service", 1)["active"] is False
    writes = sorted(sim.admin.writes()["writes"], key=lambda w: w["idempotency_key"])
    assert [(w["idempotency_key"], w["request_id"], w["auth_roles"]) for w in writes] == [
        ("cmd-1", "req-1", "API_KEY"),
        ("cmd-3", "req-3", "API_KEY"),
    ]
    assert [w["body"] for w in writes] == [
        {"active": True, "reason": "Lo ha perdido"},
        {"active": False},
    ]


def test_a_started_write_refused_with_503_is_not_applied(
    sim: SimulatorHandle, sim_client: MasStackClient
) -> None:
    # Given every request answered 503
    sim.admin.set_faults(p_503=1.0)
    # When a write is started and answered
    with pytest.raises(UpstreamUnavailable) as caught:
        start_block_on(sim_client).result()
    # Then it is transient, surely not applied, and indeed not applied
    assert (caught.value.status, caught.value.maybe_applied) == (503, False)
    assert sim.admin.target("telco", 7, "block", 1)["active"] is False


def test_a_started_write_whose_answer_is_lost_is_maybe_applied(
    sim: SimulatorHandle, sim_client: MasStackClient
) -> None:
    # Given writes that are applied and whose answer is then lost
    sim.admin.set_faults(p_lost_response=1.0)
    # When a write is started and answered
    with pytest.raises(UpstreamConnectionError) as caught:
        start_block_on(sim_client).result()
    # Then the failure is ambiguous, and the simulator shows the change applied
    assert caught.value.maybe_applied is True
    target = sim.admin.target("telco", 7, "block", 1)
    assert (target["active"], target["writes_applied"]) == (True, 1)
