"""Generations that name no subject: their records have no identity and no grant.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite cannot alter a column in place, so Alembic copies the table.
    with op.batch_alter_table("generation_records") as batch:
        batch.alter_column("identity_id", existing_type=sa.String(40), nullable=True)
        batch.alter_column("grant_id", existing_type=sa.String(40), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("generation_records") as batch:
        batch.alter_column("grant_id", existing_type=sa.String(40), nullable=False)
        batch.alter_column("identity_id", existing_type=sa.String(40), nullable=False)
