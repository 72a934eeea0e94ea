"""tasks: the ``cancelled`` state

Revision ID: 0007_task_cancelled
Revises: 0006_workers
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_task_cancelled"
down_revision: str | None = "0006_workers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "state IN ('queued', 'running', 'done', 'failed')"
NEW = "state IN ('queued', 'running', 'done', 'failed', 'cancelled')"


def upgrade() -> None:
    # Batch mode: SQLite cannot alter a CHECK constraint in place, so the table is
    # copied into one with the new constraint (PostgreSQL alters it directly).
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_constraint("task_state", type_="check")
        batch_op.create_check_constraint("task_state", NEW)


def downgrade() -> None:
    # Nothing may be left in a state the old constraint refuses: a cancelled task ends
    # as failed (its error already says it was cancelled).
    op.execute("UPDATE tasks SET state = 'failed' WHERE state = 'cancelled'")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_constraint("task_state", type_="check")
        batch_op.create_check_constraint("task_state", OLD)
