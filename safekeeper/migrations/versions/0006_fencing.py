"""fenced gc claims (claim token, fence time) and the database's clock floor

Revision ID: 0006_fencing
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_fencing"
down_revision: str | None = "0006_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("copies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("fenced_at", sa.DateTime(), nullable=True))
    op.create_table(
        "clock_floor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("high_water", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("clock_floor")
    with op.batch_alter_table("copies", schema=None) as batch_op:
        batch_op.drop_column("fenced_at")
        batch_op.drop_column("claim_token")
