"""issue 12: engine options of a push subscription, and the round of a delivery

- ``webhooks.options``: correlate_by, tenant_id, process_group.
- ``deliveries.round``: moves on each time the endpoint said "not correlated yet" and each time
  an operator opened the delivery again; the same across attempts whose answer was lost, so an
  engine's idempotency key made of it repeats exactly when the request may have arrived.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(
            sa.Column("options", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column("round", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("round")
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("options")
