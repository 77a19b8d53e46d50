"""Initial schema: principals, keys, identities, templates, grants, records, audit.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "principals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("principal_id", sa.String(40), sa.ForeignKey("principals.id"), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
    )
    op.create_index("ix_api_keys_principal_id", "api_keys", ["principal_id"])
    op.create_table(
        "identities",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("data_key", sa.LargeBinary),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("erased_at", TS),
    )
    op.create_table(
        "templates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("identity_id", sa.String(40), sa.ForeignKey("identities.id"), nullable=False),
        sa.Column("embedder", sa.String(60), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_templates_identity_id", "templates", ["identity_id"])
    op.create_table(
        "grants",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("identity_id", sa.String(40), sa.ForeignKey("identities.id"), nullable=False),
        sa.Column("principal_id", sa.String(40), sa.ForeignKey("principals.id"), nullable=False),
        sa.Column("purposes", sa.JSON, nullable=False),
        sa.Column("deny_terms", sa.JSON, nullable=False),
        sa.Column("expires_at", TS),
        sa.Column("max_uses", sa.Integer),
        sa.Column("uses", sa.Integer, nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
    )
    op.create_index("ix_grants_identity_id", "grants", ["identity_id"])
    op.create_index("ix_grants_principal_id", "grants", ["principal_id"])
    op.create_table(
        "generation_records",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("watermark", sa.String(32), nullable=False, unique=True),
        sa.Column("principal_id", sa.String(40), sa.ForeignKey("principals.id"), nullable=False),
        sa.Column("identity_id", sa.String(40), sa.ForeignKey("identities.id"), nullable=False),
        sa.Column("grant_id", sa.String(40), sa.ForeignKey("grants.id"), nullable=False),
        sa.Column("prompt_sha256", sa.String(64), nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("untrained", sa.Boolean, nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("outputs", sa.JSON, nullable=False),
        sa.Column("audit_seq", sa.BigInteger, nullable=False),
        sa.Column("subject_erased", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_generation_records_identity_id", "generation_records", ["identity_id"])
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
    )
    op.create_index("ix_audit_events_kind", "audit_events", ["kind"])


def downgrade() -> None:
    for table in (
        "audit_events",
        "generation_records",
        "grants",
        "templates",
        "identities",
        "api_keys",
        "principals",
    ):
        op.drop_table(table)
