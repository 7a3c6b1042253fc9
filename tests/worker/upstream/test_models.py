"""The API models: tolerant reads, exact writes."""

from __future__ import annotations

import json

import pydantic
import pytest

from worker.upstream import (
    Block,
    BlockStatus,
    Service,
    ServiceQuery,
    ServiceStatus,
    SubscriptionBlocks,
    SubscriptionServices,
)


def test_read_models_ignore_extra_fields_and_are_frozen() -> None:
    services = SubscriptionServices.model_validate(
        {"items": [{"id": 1, "value": "VOZ", "new": 1}], "page": 2}
    )
    assert services.items == (Service(id=1, value="VOZ"),)
    blocks = SubscriptionBlocks.model_validate({"subscription_id": 3, "items": [{"id": 2}]})
    assert blocks.items == (Block(id=2),)
    with pytest.raises(pydantic.ValidationError):
        services.items[0].value = "DATOS"  # type: ignore[misc]


def test_block_status_json_leaves_out_a_missing_reason() -> None:
    assert json.loads(BlockStatus(active=True).model_dump_json()) == {"active": True}
    assert BlockStatus(active=False, reason="").model_dump() == {"active": False, "reason": ""}


def test_write_models_require_a_real_bool() -> None:
    with pytest.raises(pydantic.ValidationError):
        ServiceStatus.model_validate({"active": 1})
    with pytest.raises(pydantic.ValidationError):
        ServiceStatus.model_validate({})


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (ServiceQuery(filter=["inactive"]), '{"filter":["inactive"]}'),
        (ServiceQuery(include=["VOZ", "DATOS"]), '{"include":["VOZ","DATOS"]}'),
        (ServiceQuery(), "{}"),
    ],
)
def test_service_query_param(query: ServiceQuery, expected: str) -> None:
    assert query.to_param() == expected
