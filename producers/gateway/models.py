"""The gateway's request and answer bodies, as pydantic models: they validate what
comes in and make the OpenAPI document (with its examples)."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, JsonValue, Tag

from subswitch.contract import ChangeBlockStatus, ChangeServiceStatus, Source

#: Most commands one request may carry (contract §9).
MAX_COMMANDS: Final = 1000

_BLOCK_EXAMPLE: Final[dict[str, JsonValue]] = {
    "type": "ChangeBlockStatus",
    "command_id": "fraud-case-8812-block",
    "org_id": "telco",
    "subscription_id": 214748364,
    "block_id": 1,
    "active": True,
    "reason": "stolen",
    "priority": "urgent",
    "correlation_id": "case-8812",
}
_SERVICE_EXAMPLE: Final[dict[str, JsonValue]] = {
    "type": "ChangeServiceStatus",
    "org_id": "telco",
    "subscription_id": 214748364,
    "service_id": 3,
    "active": True,
    "priority": "bulk",
    "source": "batch:roaming-2026-12",
}


class ServiceCommandIn(ChangeServiceStatus):
    """A ``ChangeServiceStatus`` as a producer posts it (contract §1). Left out,
    ``command_id`` is a new UUID4, ``issued_at`` now and ``source`` the API key's
    producer."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SERVICE_EXAMPLE]})
    source: Source | None = None  # type: ignore[assignment]


class BlockCommandIn(ChangeBlockStatus):
    """A ``ChangeBlockStatus`` as a producer posts it (contract §1). Left out,
    ``command_id`` is a new UUID4, ``issued_at`` now and ``source`` the API key's
    producer."""

    model_config = ConfigDict(json_schema_extra={"examples": [_BLOCK_EXAMPLE]})
    source: Source | None = None  # type: ignore[assignment]


CommandIn = Annotated[ServiceCommandIn | BlockCommandIn, Field(discriminator="type")]


class CommandBatch(BaseModel):
    """Up to 1,000 commands; bulk-lane ones travel in chunks."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={"examples": [{"commands": [_SERVICE_EXAMPLE, _BLOCK_EXAMPLE]}]},
    )
    commands: list[CommandIn] = Field(min_length=1, max_length=MAX_COMMANDS)


def _request_kind(value: Any) -> str:
    if isinstance(value, dict) and "commands" in value:
        return "batch"
    if isinstance(value, CommandBatch):
        return "batch"
    return "command"


#: What ``POST /v1/commands`` takes: one command, or ``{"commands": [...]}``.
CommandsRequest = Annotated[
    Annotated[CommandIn, Tag("command")] | Annotated[CommandBatch, Tag("batch")],
    Discriminator(_request_kind),
]
#: Tags of the unions above, which say nothing to a reader of an error's location.
UNION_TAGS: Final = frozenset({"command", "batch", "ChangeServiceStatus", "ChangeBlockStatus"})


class AcceptedCommand(BaseModel):
    """A command the gateway accepted: its id and where its status is."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "command_id": "fraud-case-8812-block",
                    "location": "/v1/commands/fraud-case-8812-block",
                }
            ]
        }
    )
    command_id: str
    location: str


class AcceptedBatchItem(AcceptedCommand):
    """One command of an accepted batch, by its place in the request."""

    index: int


class AcceptedBatch(BaseModel):
    """Every command of the batch, accepted, in the request's order."""

    accepted: int
    commands: list[AcceptedBatchItem]


class ProblemItem(BaseModel):
    """One problem of one command: ``index`` in the batch (null for a single command),
    ``field`` (a dotted path, null when the whole command is meant), the message."""

    index: int | None = None
    field: str | None = None
    message: str
    command_id: str | None = None


class Problem(BaseModel):
    """An error answer (RFC 9457, ``application/problem+json``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Invalid command",
                    "status": 422,
                    "detail": "1 problem in the request; nothing was enqueued",
                    "errors": [
                        {
                            "index": 3,
                            "field": "block_id",
                            "message": "Input should be less than or equal to 2",
                        }
                    ],
                }
            ]
        }
    )
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[ProblemItem] | None = None
    accepted: list[AcceptedBatchItem] | None = None
    checks: dict[str, str] | None = None


class Health(BaseModel):
    """``ok``, with each readiness check's result."""

    status: Literal["ok"]
    checks: dict[str, str] = Field(default_factory=dict)
