"""The console: server-side sessions, indexed copies of audit body fields, and event counts.

``audit_events`` gains ``principal_id``, ``actor``, ``identity_id`` and ``code`` (copies of
``body.principal_id``, ``body.actor``, ``body.identity_id`` and ``body.decision``, filled here for
existing events and at append for new ones; see ``gateway/storage/audit_index.py``) and the
indexes the console's keyset pages use. ``audit_counts`` holds how many events fell in each UTC
day and hour by kind and code, filled here from the existing events and kept by a trigger on
every insert (in the inserting transaction, whoever inserts), so the console's charts and report
read a few hundred counts instead of every event. The copies and counts are not hashed: the chain
still covers the body alone, so this migration changes no event's hash.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from consentry.gateway.storage.audit_index import COLUMNS, WIDTHS

revision = "0006"
down_revision = "0005"
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
UNITS = {"day": 10, "hour": 13}
"""``audit_counts.unit`` -> how many leading characters of ``ts`` name its bucket."""
TRIGGER = "audit_events_count"


def _count_rows(new: str) -> str:
    """VALUES rows (one per unit) that count the event ``new``."""
    return ", ".join(
        f"('{unit}', substr({new}.ts, 1, {chars}), {new}.kind, coalesce({new}.code, ''), 1)"
        for unit, chars in UNITS.items()
    )


def _trigger(dialect: str) -> list[str]:
    """DDL of the trigger that adds each inserted event to ``audit_counts``."""
    upsert = (
        "INSERT INTO audit_counts (unit, bucket, kind, code, events) VALUES {rows} "
        "ON CONFLICT (unit, bucket, kind, code) DO UPDATE SET events = audit_counts.events + 1"
    )
    if dialect == "postgresql":
        return [
            f"CREATE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            + upsert.format(rows=_count_rows("NEW"))
            + "; RETURN NULL; END $$",
            f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON audit_events "
            f"FOR EACH ROW EXECUTE FUNCTION {TRIGGER}()",
        ]
    return [
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON audit_events BEGIN "
        + upsert.format(rows=_count_rows("NEW"))
        + "; END"
    ]


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
        "audit_counts",
        sa.Column("unit", sa.String(4), primary_key=True),
        sa.Column("bucket", sa.String(13), primary_key=True),
        sa.Column("kind", sa.String(40), primary_key=True),
        sa.Column("code", sa.String(60), primary_key=True),
        sa.Column("events", sa.BigInteger, nullable=False),
    )
    for unit, chars in UNITS.items():
        op.execute(
            "INSERT INTO audit_counts (unit, bucket, kind, code, events) "
            f"SELECT '{unit}', substr(ts, 1, {chars}), kind, coalesce(code, ''), count(*) FROM audit_events "
            f"GROUP BY substr(ts, 1, {chars}), kind, coalesce(code, '')"
        )
    for statement in _trigger(dialect):
        op.execute(statement)
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
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER {TRIGGER} ON audit_events")
        op.execute(f"DROP FUNCTION {TRIGGER}()")
    else:
        op.execute(f"DROP TRIGGER {TRIGGER}")
    op.drop_table("audit_counts")
    for name in INDEXES:
        op.drop_index(name, "audit_events")
    # Native DROP COLUMN (SQLite 3.35+), once the indexes on these columns are gone.
    for column in COLUMNS:
        op.drop_column("audit_events", column)
