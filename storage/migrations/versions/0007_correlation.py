"""issue 14: correlation across organisations

- ``messages.mode``: ``publish`` or ``correlate`` (the sender asked for a correlation receipt).
- ``messages.correlation``: what the recipient's correlation receipt said (outgoing).
- ``correlation_receipts``: receipts owed to senders, until the platform has taken them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 14:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("mode", sa.String(10), nullable=False, server_default="publish"))
        batch.add_column(sa.Column("correlation", sa.JSON(), nullable=True))
    op.create_table(
        "correlation_receipts",
        sa.Column("seq", _BIGINT, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(20), nullable=False),
        sa.Column("peer", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(20), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("envelope", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_correlation_receipts")),
        sa.UniqueConstraint("id", name=op.f("uq_correlation_receipts_id")),
    )
    op.create_index(
        op.f("ix_correlation_receipts_next_attempt_at"),
        "correlation_receipts",
        ["next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_correlation_receipts_next_attempt_at"), table_name="correlation_receipts"
    )
    op.drop_table("correlation_receipts")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("correlation")
        batch.drop_column("mode")
