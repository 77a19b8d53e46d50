"""Per-identity LoRA adapters, photos kept at enrollment, and the grant flag that lets training
use those photos.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # A server default so that grants made before this revision read as "no enrollment photos".
    # Plain ALTER TABLE, not batch mode: rebuilding ``grants`` on SQLite drops a table that
    # generation records and adapters reference, which its foreign keys refuse.
    op.add_column(
        "grants", sa.Column("use_enrollment_photos", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.create_table(
        "enrollment_photos",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("identity_id", sa.String(40), sa.ForeignKey("identities.id"), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_enrollment_photos_identity_id", "enrollment_photos", ["identity_id"])
    op.create_table(
        "adapters",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("identity_id", sa.String(40), sa.ForeignKey("identities.id"), nullable=False),
        sa.Column("grant_id", sa.String(40), sa.ForeignKey("grants.id"), nullable=False),
        sa.Column("principal_id", sa.String(40), sa.ForeignKey("principals.id"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("prior_images", sa.Integer, nullable=False),
        sa.Column("steps_done", sa.Integer, nullable=False),
        sa.Column("loss", sa.Float),
        sa.Column("photos_source", sa.String(20), nullable=False),
        sa.Column("photos", sa.Integer, nullable=False),
        sa.Column("weights_sha256", sa.String(64)),
        sa.Column("error_code", sa.String(60)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS),
    )
    op.create_index("ix_adapters_identity_id", "adapters", ["identity_id"])
    op.create_index("ix_adapters_grant_id", "adapters", ["grant_id"])


def downgrade() -> None:
    # Adapter files on disk are not touched here: without their rows nothing opens them, and the
    # next gate open at 0004 sweeps them as orphans.
    op.drop_table("adapters")
    op.drop_table("enrollment_photos")
    # Native DROP COLUMN (SQLite 3.35+), for the same reason as above.
    op.drop_column("grants", "use_enrollment_photos")
