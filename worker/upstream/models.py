"""Pydantic models of the MasStack customers API v2 bodies used by the client.

Read models ignore unknown fields (the upstream may add some) and are frozen.
Only what the client needs is required: an item's ``id`` and a list's ``items``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StringConstraints,
    field_validator,
    model_serializer,
)

MAX_REASON_LENGTH = 255
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Service(_Model):
    """One service of a subscription (e.g. ``VOZ``, voice)."""

    id: int
    value: str | None = None
    changeable: bool | None = None
    date_last_modified: datetime | None = None
    active: bool | None = None


class SubscriptionServices(_Model):
    """Answer of ``GET orgs/{org}/subscriptions/{id}/services``."""

    subscription_id: int | None = None
    items: tuple[Service, ...]


class Block(_Model):
    """One barring of a subscription (e.g. ``ROBO``, theft)."""

    id: int
    value: str | None = None
    date_last_modified: datetime | None = None
    description: str | None = None


class SubscriptionBlocks(_Model):
    """Answer of ``GET orgs/{org}/subscriptions/{id}/blocks``."""

    subscription_id: int | None = None
    items: tuple[Block, ...]


class ServiceStatus(_Model):
    """Body of ``PATCH .../services/{id}``: ``active`` switches the service on or off."""

    active: StrictBool


class BlockStatus(_Model):
    """Body of ``PATCH .../blocks/{id}``: ``active`` puts the block on or lifts it.

    ``reason`` is left out of the JSON when ``None``.
    """

    active: StrictBool
    reason: (
        Annotated[str, StringConstraints(max_length=MAX_REASON_LENGTH, pattern=_NO_CONTROL)] | None
    ) = None

    @model_serializer(mode="wrap")
    def _drop_missing_reason(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("reason") is None:
            data.pop("reason", None)
        return data


class ErrorMessage(_Model):
    """The upstream's error body: ``{"code", "status", "message", "detailMsg"}``.

    Every field is optional and leniently parsed: a non-integer ``code`` becomes
    ``None`` and numbers in text fields become text, so one odd field never hides
    the rest. Dump with ``by_alias=True`` to get ``detailMsg``.
    """

    code: int | None = None
    status: str | None = None
    message: str | None = None
    detail_msg: str | None = Field(default=None, alias="detailMsg")

    @field_validator("code", mode="before")
    @classmethod
    def _lenient_code(cls, value: Any) -> int | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        return None

    @field_validator("status", "message", "detail_msg", mode="before")
    @classmethod
    def _lenient_text(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, str) else str(value)

    def summary(self) -> str:
        """One line: ``[code 7] status: message (detailMsg)`` with the parts present."""
        parts = [f"[code {self.code}]" if self.code is not None else ""]
        parts.append(f"{self.status}:" if self.status and self.message else self.status or "")
        parts.append(self.message or "")
        parts.append(f"({self.detail_msg})" if self.detail_msg else "")
        return " ".join(p for p in parts if p) or "empty ErrorMessage"


class ServiceQuery(_Model):
    """The ``query`` parameter of the services list: ``{"filter": [...], "include": [...]}``.

    The filter selects ``active`` or ``inactive`` services; the public documentation
    says no more, so values are passed through. Lists left ``None`` are omitted.
    """

    filter: tuple[str, ...] | None = None
    include: tuple[str, ...] | None = None

    def to_param(self) -> str:
        """The compact JSON string sent as ``?query=``."""
        data = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(data, separators=(",", ":"))
