"""The archive's one table, ``subswitch_events``: one row per result event.

Columns for what people search by, plus the whole event as published. The indexes
serve ``subswitch history`` (by subscription, then ``issued_at``), ``status`` (by
``command_id``), audit exports (by ``correlation_id``; by ``source`` and
``completed_at``), retention and the lag gauge (by ``completed_at``). The migrations
(``subswitch/archive/migrations``) create exactly this; a test compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

TABLE_NAME: Final = "subswitch_events"
#: Alembic's bookkeeping table, named so that it never meets another application's.
VERSION_TABLE: Final = "subswitch_archive_version"


class UtcDateTime(TypeDecorator[datetime]):
    """An aware timestamp, stored in UTC on every database (SQLite keeps no offset), so
    that comparisons and ordering are the same on both."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Stored as UTC (a naive value is taken to be UTC already)."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value if dialect.name == "sqlite" else value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Read back as an aware UTC timestamp."""
        if value is None:
            return None
        stamp: datetime = value
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


#: Integer on SQLite, where only ``INTEGER PRIMARY KEY`` is an auto-incremented row id.
ROW_ID: Final = BigInteger().with_variant(Integer(), "sqlite")
EVENT_JSON: Final = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData()

events = Table(
    TABLE_NAME,
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("command_id", String(128)),
    Column("command_type", String(32)),
    Column("org_id", String(64)),
    Column("subscription_id", BigInteger),
    Column("target_kind", String(8)),
    Column("target_id", BigInteger),
    Column("active", Boolean),
    Column("reason", Text),
    Column("outcome", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("upstream_status", Integer),
    Column("error", Text),
    Column("source", Text),
    Column("correlation_id", Text),
    Column("lane", String(8)),
    Column("issued_at", UtcDateTime),
    Column("completed_at", UtcDateTime, nullable=False),
    Column("archived_at", UtcDateTime, nullable=False),
    Column("event", EVENT_JSON, nullable=False),
    UniqueConstraint("event_id", name="uq_subswitch_events_event_id"),
    Index("ix_subswitch_events_history", "org_id", "subscription_id", "issued_at"),
    Index("ix_subswitch_events_command", "command_id", "completed_at"),
    Index("ix_subswitch_events_correlation", "correlation_id", "issued_at"),
    Index("ix_subswitch_events_source", "source", "completed_at"),
    Index("ix_subswitch_events_completed", "completed_at"),
)
