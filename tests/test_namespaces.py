"""Each test process (each xdist worker) gets a Redis DB and a RabbitMQ vhost of its own."""

from __future__ import annotations

import re

import pytest

from tests.conftest import AMQP_URL, NAMESPACE, REDIS_URL, Namespace, session_namespace


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Namespace(15, "/")),
        ({"PYTEST_XDIST_WORKER": "gw0"}, Namespace(15, "/", "gw0")),
        ({"PYTEST_XDIST_WORKER": "gw1"}, Namespace(14, "subswitch-test-gw1", "gw1")),
        (
            {"PYTEST_XDIST_WORKER": "gw0", "SUBSWITCH_TEST_REDIS_DB": "12"},
            Namespace(12, "/", "gw0"),
        ),
        (
            {
                "PYTEST_XDIST_WORKER": "gw3",
                "SUBSWITCH_TEST_REDIS_DB": "12",
                "SUBSWITCH_TEST_AMQP_VHOST": "wa",
            },
            Namespace(9, "wa-gw3", "gw3"),
        ),
        ({"SUBSWITCH_TEST_AMQP_VHOST": "wa"}, Namespace(15, "wa")),
    ],
)
def test_a_namespace_follows_from_the_base_and_the_xdist_worker(
    environ: dict[str, str], expected: Namespace
) -> None:
    # Given a session's environment / When its namespace is derived
    namespace = session_namespace(environ)
    # Then the base namespace is gw0's, and each further worker counts down from it
    assert namespace == expected


def test_two_xdist_workers_never_share_a_namespace() -> None:
    # Given one base namespace
    base = {"SUBSWITCH_TEST_REDIS_DB": "15", "SUBSWITCH_TEST_AMQP_VHOST": "/"}
    # When eight workers derive theirs
    spaces = [session_namespace({**base, "PYTEST_XDIST_WORKER": f"gw{n}"}) for n in range(8)]
    # Then no two share a DB or a vhost, and none is a developer's DB 0
    assert len({space.redis_db for space in spaces}) == 8
    assert len({space.amqp_vhost for space in spaces}) == 8
    assert min(space.redis_db for space in spaces) > 0
    assert len({space.slug for space in spaces}) == 8


@pytest.mark.parametrize(
    ("namespace", "slug"),
    [
        (Namespace(15, "/"), "subswitch_test_15"),
        (Namespace(11, "wa-gw1", "gw1"), "subswitch_test_wa_gw1_11"),
        (Namespace(14, "subswitch-test-gw1", "gw1"), "subswitch_test_subswitch_test_gw1_14"),
    ],
)
def test_a_namespace_has_an_identifier_for_other_servers(namespace: Namespace, slug: str) -> None:
    # Given a namespace / When it names itself for, say, a PostgreSQL schema
    # Then the name is a plain lowercase identifier that tells the namespace apart
    assert namespace.slug == slug
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", namespace.slug)


def test_this_session_talks_to_its_own_namespace() -> None:
    # Given this session's namespace / When its URLs are built
    # Then they name its DB and its vhost (quoted)
    assert REDIS_URL.endswith(f"/{NAMESPACE.redis_db}")
    vhost = AMQP_URL.rsplit("/", 1)[1]
    assert vhost == (
        "" if NAMESPACE.amqp_vhost == "/" else NAMESPACE.amqp_vhost.replace("/", "%2F")
    )
