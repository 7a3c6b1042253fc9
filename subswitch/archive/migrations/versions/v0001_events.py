"""The events table and its indexes.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_TABLE = "subswitch_events"


def upgrade() -> None:
    """Create ``subswitch_events`` with its indexes."""
    stamp = sa.DateTime(timezone=True)
    op.create_table(
        _TABLE,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("command_id", sa.String(128)),
        sa.Column("command_type", sa.String(32)),
        sa.Column("org_id", sa.String(64)),
        sa.Column("subscription_id", sa.BigInteger),
        sa.Column("target_kind", sa.String(8)),
        sa.Column("target_id", sa.BigInteger),
        sa.Column("active", sa.Boolean),
        sa.Column("reason", sa.Text),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("upstream_status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("source", sa.Text),
        sa.Column("correlation_id", sa.Text),
        sa.Column("lane", sa.String(8)),
        sa.Column("issued_at", stamp),
        sa.Column("completed_at", stamp, nullable=False),
        sa.Column("archived_at", stamp, nullable=False),
        sa.Column("event", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_subswitch_events_event_id"),
    )  # fmt: skip
    op.create_index(
        "ix_subswitch_events_history", _TABLE, ["org_id", "subscription_id", "issued_at"]
    )
    op.create_index("ix_subswitch_events_command", _TABLE, ["command_id", "completed_at"])
    op.create_index("ix_subswitch_events_correlation", _TABLE, ["correlation_id", "issued_at"])
    op.create_index("ix_subswitch_events_source", _TABLE, ["source", "completed_at"])
    op.create_index("ix_subswitch_events_completed", _TABLE, ["completed_at"])


def downgrade() -> None:
    """Drop the table (and its indexes with it)."""
    op.drop_table(_TABLE)
