"""The console: server-side sessions, and indexed copies of audit body fields.

``audit_events`` gains ``principal_id``, ``actor``, ``identity_id`` and ``code`` (copies of
``body.principal_id``, ``body.actor``, ``body.identity_id`` and ``body.decision``, filled here for
existing events and at append for new ones; see ``gateway/storage/audit_index.py``) and the
indexes the console's keyset pages and aggregates use. The copies are not hashed: the chain
still covers the body alone, so this migration changes no event's hash.

Revision ID: 0006
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from consentry.gateway.storage.audit_index import COLUMNS, WIDTHS

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
INDEXES = {
    "ix_audit_events_kind_seq": ["kind", "seq"],
    "ix_audit_events_kind_ts_code": ["kind", "ts", "code"],
    "ix_audit_events_code_seq": ["code", "seq"],
    "ix_audit_events_principal_seq": ["principal_id", "seq"],
    "ix_audit_events_actor_seq": ["actor", "seq"],
    "ix_audit_events_identity_seq": ["identity_id", "seq"],
    "ix_audit_events_ts": ["ts"],
}


def _copy(dialect: str, field: str, width: int) -> str:
    """SQL for: the body field when it is a string (cut to the column width), else NULL."""
    if dialect == "postgresql":
        return f"CASE WHEN json_typeof(body->'{field}') = 'string' THEN left(body->>'{field}', {width}) END"
    return (
        f"CASE WHEN json_type(body, '$.{field}') = 'text' "
        f"THEN substr(json_extract(body, '$.{field}'), 1, {width}) END"
    )


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: rebuilding audit_events on SQLite is needless here.
    for column in COLUMNS:
        op.add_column("audit_events", sa.Column(column, sa.String(WIDTHS[column])))
    dialect = op.get_bind().dialect.name
    sets = ", ".join(
        f"{column} = {_copy(dialect, field, WIDTHS[column])}" for column, field in COLUMNS.items()
    )
    op.execute(f"UPDATE audit_events SET {sets}")
    for name, columns in INDEXES.items():
        op.create_index(name, "audit_events", columns)
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("principal_id", sa.String(40), sa.ForeignKey("principals.id"), nullable=False),
        sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
    )
    op.create_index("ix_console_sessions_principal_id", "console_sessions", ["principal_id"])
    op.create_index("ix_console_sessions_key_id", "console_sessions", ["key_id"])


def downgrade() -> None:
    op.drop_table("console_sessions")
    for name in INDEXES:
        op.drop_index(name, "audit_events")
    # Native DROP COLUMN (SQLite 3.35+), once the indexes on these columns are gone.
    for column in COLUMNS:
        op.drop_column("audit_events", column)
