"""The client against the real simulator (in-process HTTP server on a loopback port)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from subswitch.settings import Settings
from subswitch.simulator.accounts import generate_service_account
from subswitch.simulator.config import SimulatorConfig
from subswitch.simulator.testing import SimulatorHandle, running_simulator
from tests.worker.upstream.conftest import new_client
from worker.upstream import (
    AuthenticationError,
    MasStackClient,
    PermanentError,
    ServiceAccount,
    ServiceAccountTokenProvider,
    StaticToken,
    TransientError,
    UpstreamConnectionError,
    UpstreamTimeout,
    UpstreamUnavailable,
    from_settings,
)


@pytest.fixture(scope="module")
def account_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_service_account(tmp_path_factory.mktemp("sa") / "account.json")


@pytest.fixture(scope="module")
def simulator(account_path: Path) -> Iterator[SimulatorHandle]:
    config = SimulatorConfig(service_account_files=(account_path,), seed=7)
    with running_simulator(config) as handle:
        yield handle


@pytest.fixture
def sim(simulator: SimulatorHandle) -> Iterator[SimulatorHandle]:
    simulator.admin.reset(faults=True)
    yield simulator
    simulator.admin.reset(faults=True)


@pytest.fixture
def client(sim: SimulatorHandle) -> Iterator[MasStackClient]:
    with new_client(base_url=sim.base_url, auth=StaticToken(SecretStr("dev-token"))) as c:
        yield c


class TokenRequests:
    """Counts requests an httpx client sends (an event hook, so nothing is mocked)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, request: httpx.Request) -> None:
        self.count += 1


def test_block_change_is_applied_with_our_headers(
    sim: SimulatorHandle, client: MasStackClient
) -> None:
    # Given the simulator in its seed state (blocks lifted)
    # When block 1 is put on with a reason
    status = client.change_block_status(
        "telco",
        7,
        1,
        active=True,
        reason="Lo ha perdido",
        idempotency_key="cmd-7-block",
        request_id="r-1",
    )
    # Then the upstream answered 201 and shows the block with its reason
    assert status == 201
    target = sim.admin.target("telco", 7, "block", 1)
    assert (target["active"], target["reason"], target["writes_applied"]) == (
        True,
        "Lo ha perdido",
        1,
    )
    (write,) = sim.admin.writes()["writes"]
    assert write["idempotency_key"] == "cmd-7-block"
    assert write["request_id"] == "r-1"
    assert write["auth_roles"] == "API_KEY"
    assert write["body"] == {"active": True, "reason": "Lo ha perdido"}


def test_service_change_is_applied(sim: SimulatorHandle, client: MasStackClient) -> None:
    # Given voice (service 1) is active in the seed state
    # When it is switched off
    assert client.change_service_status("telco", 7, 1, active=False, idempotency_key="k1") == 201
    # Then the simulator shows it inactive
    assert sim.admin.target("telco", 7, "service", 1)["active"] is False


def test_lists_reflect_the_changes(sim: SimulatorHandle, client: MasStackClient) -> None:
    # Given block 2 put on and roaming (service 3) switched on
    client.change_block_status("acme", 9, 2, active=True, reason="perdida", idempotency_key="b")
    client.change_service_status("acme", 9, 3, active=True, idempotency_key="s")
    # When both lists are read
    blocks = client.list_blocks("acme", 9)
    services = client.list_services("acme", 9)
    # Then they show what was written (and tolerate the simulator's extra fields)
    assert [(b.id, b.value, b.description) for b in blocks.items] == [(2, "PERDIDA", "perdida")]
    assert blocks.subscription_id == services.subscription_id == 9
    by_id = {s.id: s for s in services.items}
    assert by_id[3].active is True
    assert by_id[4].changeable is False


def test_unknown_subscription_is_404_with_error_message(client: MasStackClient) -> None:
    # Given a subscription id beyond the simulator's 1..1000
    # When a block is changed on it
    with pytest.raises(PermanentError) as caught:
        client.change_block_status("telco", 10**6, 1, active=True, idempotency_key="k")
    # Then it is a permanent 404 with the upstream's ErrorMessage
    assert caught.value.status == 404
    assert caught.value.error is not None
    assert caught.value.error.code == 404


def test_non_changeable_service_is_400_with_error_message_fields(
    sim: SimulatorHandle, client: MasStackClient
) -> None:
    # Given service 4 (SMS_PREMIUM), which cannot be switched
    # When it is switched on
    with pytest.raises(PermanentError) as caught:
        client.change_service_status("telco", 7, 4, active=True, idempotency_key="k")
    # Then the error carries every ErrorMessage field and nothing was applied
    error = caught.value.error
    assert caught.value.status == 400
    assert error is not None
    assert error.code == 400
    assert error.status == "Bad Request"
    assert error.message
    assert error.detail_msg
    assert "not changeable" in str(caught.value)
    assert sim.admin.target("telco", 7, "service", 4)["writes_applied"] == 0


def test_wrong_static_token_is_an_authentication_error(sim: SimulatorHandle) -> None:
    # Given a client with a token the simulator does not know
    client = new_client(base_url=sim.base_url, auth=StaticToken(SecretStr("wrong")))
    # When it writes / Then it gets a permanent auth error and nothing is applied
    with client, pytest.raises(AuthenticationError) as caught:
        client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    assert caught.value.status == 401
    assert sim.admin.stats()["writes_applied"] == 0


def test_service_account_flow_refreshes_once_after_revocation(
    sim: SimulatorHandle, account_path: Path
) -> None:
    # Given a client authenticating with a service account through the token endpoint
    token_requests = TokenRequests()
    with httpx.Client(event_hooks={"request": [token_requests]}) as token_http:
        provider = ServiceAccountTokenProvider(
            account=ServiceAccount.from_file(account_path), token_url=sim.token_url, http=token_http
        )
        with new_client(base_url=sim.base_url, auth=provider) as client:
            # When it writes twice
            assert (
                client.change_block_status("telco", 7, 1, active=True, idempotency_key="a") == 201
            )
            assert (
                client.change_block_status("telco", 7, 2, active=True, idempotency_key="b") == 201
            )
            # Then one token served both
            assert token_requests.count == 1
            # When every issued token is revoked and it writes again
            sim.admin.revoke_tokens()
            assert (
                client.change_block_status("telco", 7, 1, active=False, idempotency_key="c") == 201
            )
    # Then it refreshed exactly once, and the refused attempt applied nothing
    assert token_requests.count == 2
    last_two = sim.admin.writes()["writes"][-2:]
    assert [(w["idempotency_key"], w["status"], w["applied"]) for w in last_two] == [
        ("c", 401, False),
        ("c", 201, True),
    ]
    assert sim.admin.target("telco", 7, "block", 1)["active"] is False


def test_from_settings_with_a_service_account(sim: SimulatorHandle, account_path: Path) -> None:
    # Given settings naming the simulator, its token URL and a service-account file
    settings = Settings(
        upstream_url=sim.base_url,
        service_account_file=account_path,
        token_url=sim.token_url,
        read_timeout=5.0,
    )
    # When a client is built from them and writes
    with from_settings(settings) as client:
        status = client.change_service_status("telco", 8, 2, active=False, idempotency_key="k")
    # Then the write is applied
    assert status == 201
    assert sim.admin.target("telco", 8, "service", 2)["active"] is False


def test_injected_503_is_transient_and_not_applied(
    sim: SimulatorHandle, client: MasStackClient
) -> None:
    # Given every request answered 503
    sim.admin.set_faults(p_503=1.0)
    # When a block is changed
    with pytest.raises(UpstreamUnavailable) as caught:
        client.change_block_status("telco", 7, 1, active=True, idempotency_key="k")
    # Then the error is transient and says the change was not applied
    assert caught.value.status == 503
    assert caught.value.maybe_applied is False
    assert sim.admin.target("telco", 7, "block", 1)["active"] is False


def test_injected_429_with_http_date_retry_after(
    sim: SimulatorHandle, client: MasStackClient
) -> None:
    # Given every request answered 429 with Retry-After as an HTTP date 30 s ahead
    sim.admin.set_faults(p_429=1.0, retry_after_s=30, retry_after_http_date=True)
    # When blocks are listed
    with pytest.raises(UpstreamUnavailable) as caught:
        client.list_blocks("telco", 7)
    # Then the wait is about 30 s (HTTP dates have whole seconds)
    assert caught.value.retry_after is not None
    assert 28.0 <= caught.value.retry_after <= 30.0


def test_lost_response_is_transient_maybe_applied_and_was_applied(
    sim: SimulatorHandle, client: MasStackClient
) -> None:
    # Given writes that are applied and whose answer is then lost
    sim.admin.set_faults(p_lost_response=1.0)
    # When a block is changed
    with pytest.raises(TransientError) as caught:
        client.change_block_status("telco", 7, 1, active=True, idempotency_key="lost-1")
    # Then the client reports an ambiguous, retryable failure...
    assert isinstance(caught.value, UpstreamConnectionError)
    assert caught.value.maybe_applied is True
    # ...and the simulator shows the change applied
    target = sim.admin.target("telco", 7, "block", 1)
    assert (target["active"], target["writes_applied"]) == (True, 1)


def test_read_timeout_on_a_slow_write_is_maybe_applied(sim: SimulatorHandle) -> None:
    # Given a client with a short read timeout and an upstream that answers late
    sim.admin.set_faults(p_slow=1.0, slow_ms=5_000)
    timeout = httpx.Timeout(connect=3.0, read=0.2, write=3.0, pool=3.0)
    with new_client(
        base_url=sim.base_url, auth=StaticToken(SecretStr("dev-token")), timeout=timeout
    ) as client:
        started = time.monotonic()
        # When a block is changed
        with pytest.raises(UpstreamTimeout) as caught:
            client.change_block_status("telco", 7, 1, active=True, idempotency_key="slow")
    # Then the timeout is retryable and ambiguous, and came after the read timeout
    assert caught.value.maybe_applied is True
    assert time.monotonic() - started < 3.0
