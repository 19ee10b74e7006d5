"""issue 8: ids per sender, envelope digests, sync failures, peers re-verified

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:00:00.000000

- ``messages``: unique per (direction, sender, id) among rows that are not rejected, instead of
  (id, direction); a plain index on ``id`` for lookups; ``digest`` of the envelope.
- ``sync_state.failures``: pulls failed in a row.
- ``peers``: rows cached before registration proofs were checked are dropped; they are fetched
  again, verified and pinned on next use.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_NOT_REJECTED = sa.text("status <> 'rejected'")


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest", sa.LargeBinary(), nullable=True))
        batch_op.drop_constraint("uq_messages_id_direction", type_="unique")
        batch_op.create_index("ix_messages_id", ["id"], unique=False)
        batch_op.create_index(
            "uq_messages_direction_sender_id",
            ["direction", "sender", "id"],
            unique=True,
            sqlite_where=_NOT_REJECTED,
            postgresql_where=_NOT_REJECTED,
        )
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
    op.execute("DELETE FROM peers")


def downgrade() -> None:
    with op.batch_alter_table("sync_state", schema=None) as batch_op:
        batch_op.drop_column("failures")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("uq_messages_direction_sender_id")
        batch_op.drop_index("ix_messages_id")
        batch_op.create_unique_constraint("uq_messages_id_direction", ["id", "direction"])
        batch_op.drop_column("digest")
