"""store identity: the marker uuid each location's store carries

Revision ID: 0006_identity
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_identity"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("store_uuid", sa.String(length=36), nullable=True))
        batch_op.create_index("ux_locations_store_uuid", ["store_uuid"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("locations", schema=None) as batch_op:
        batch_op.drop_index("ux_locations_store_uuid")
        batch_op.drop_column("store_uuid")
