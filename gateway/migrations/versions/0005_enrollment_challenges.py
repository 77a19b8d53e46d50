"""Self-enrollment with a liveness proof: one-time challenges, and how each identity and grant
was attested (operator_attested or self_attested_with_liveness).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
OPERATOR_ATTESTED = "operator_attested"


def upgrade() -> None:
    op.create_table(
        "enrollment_challenges",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("nonce_sha256", sa.String(64), nullable=False),
        sa.Column("poses", sa.JSON, nullable=False),
        sa.Column("issued_to", sa.String(40), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        sa.Column("identity_id", sa.String(40), sa.ForeignKey("identities.id")),
        sa.Column("refused_code", sa.String(60)),
    )
    # Server defaults: identities and grants made before this revision were operator-attested.
    # Plain ALTER TABLE, not batch mode, as in 0004 (rebuilding a referenced table on SQLite
    # breaks the foreign keys that point at it).
    for table in ("identities", "grants"):
        op.add_column(
            table, sa.Column("attestation", sa.String(40), nullable=False, server_default=OPERATOR_ATTESTED)
        )
    op.add_column("identities", sa.Column("liveness_challenge_id", sa.String(40)))
    op.add_column("identities", sa.Column("evidence_sha256", sa.String(64)))


def downgrade() -> None:
    # Native DROP COLUMN (SQLite 3.35+), for the same reason as above.
    op.drop_column("identities", "evidence_sha256")
    op.drop_column("identities", "liveness_challenge_id")
    for table in ("grants", "identities"):
        op.drop_column(table, "attestation")
    op.drop_table("enrollment_challenges")
