"""issue 11: push subscriptions, their deliveries and the attempts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 11:00:00.000000

- ``webhooks``: subscriptions from config and the API, with sealed auth and secret, and health
  (last success, failure streak, breaker); config rows unique per (url, format).
- ``deliveries``: one row per (event, subscription); open rows are claimed when due.
- ``delivery_attempts``: each request of a delivery, with up to 20 kB of the response.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_CONFIG_SOURCE = sa.text("source = 'config'")


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(length=20), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("filter", sa.JSON(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("auth_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("ordered", sa.Boolean(), nullable=False),
        sa.Column("receipts", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failure_streak", sa.Integer(), nullable=False),
        sa.Column("breaker_state", sa.String(length=16), nullable=False),
        sa.Column("breaker_until", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "format IN ('standard', 'camunda7', 'camunda8', 'spiff')", name="ck_webhooks_format"
        ),
        sa.CheckConstraint("source IN ('config', 'api')", name="ck_webhooks_source"),
        sa.CheckConstraint(
            "breaker_state IN ('closed', 'open', 'half_open')", name="ck_webhooks_breaker_state"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )
    op.create_index(
        "uq_webhooks_url_format",
        "webhooks",
        ["url", "format"],
        unique=True,
        sqlite_where=_CONFIG_SOURCE,
        postgresql_where=_CONFIG_SOURCE,
    )

    op.create_table(
        "deliveries",
        sa.Column("seq", _BIGINT, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=20), nullable=False),
        sa.Column("webhook_id", sa.String(length=20), nullable=False),
        sa.Column("event_seq", _BIGINT, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'dead')", name="ck_deliveries_status"
        ),
        sa.ForeignKeyConstraint(
            ["event_seq"],
            ["events.seq"],
            name=op.f("fk_deliveries_event_seq_events"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_deliveries_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_deliveries")),
        sa.UniqueConstraint(
            "event_seq", "webhook_id", name=op.f("uq_deliveries_event_seq_webhook_id")
        ),
        sa.UniqueConstraint("id", name=op.f("uq_deliveries_id")),
    )
    op.create_index(
        "ix_deliveries_status_next_attempt_at", "deliveries", ["status", "next_attempt_at"]
    )
    op.create_index("ix_deliveries_webhook_id_seq", "deliveries", ["webhook_id", "seq"])
    op.create_index(
        "ix_deliveries_webhook_id_status_event_seq",
        "deliveries",
        ["webhook_id", "status", "event_seq"],
    )

    op.create_table(
        "delivery_attempts",
        sa.Column("id", _BIGINT, autoincrement=True, nullable=False),
        sa.Column("delivery_seq", _BIGINT, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_seq"],
            ["deliveries.seq"],
            name=op.f("fk_delivery_attempts_delivery_seq_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    op.create_index(
        "ix_delivery_attempts_delivery_seq_id", "delivery_attempts", ["delivery_seq", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_attempts_delivery_seq_id", table_name="delivery_attempts")
    op.drop_table("delivery_attempts")
    op.drop_index("ix_deliveries_webhook_id_status_event_seq", table_name="deliveries")
    op.drop_index("ix_deliveries_webhook_id_seq", table_name="deliveries")
    op.drop_index("ix_deliveries_status_next_attempt_at", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_index("uq_webhooks_url_format", table_name="webhooks")
    op.drop_table("webhooks")
