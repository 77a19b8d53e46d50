"""The indexed copies of an audit event's body fields (``audit_events.principal_id``, ``actor``,
``identity_id``, ``code``): what the console filters and pages by.

They are derived from the body at append, outside the hash (the chain hashes the body alone);
migration 0006 fills them for events appended before it with the same rule.
"""

from __future__ import annotations

from typing import Any

COLUMNS: dict[str, str] = {
    "principal_id": "principal_id",
    "actor": "actor",
    "identity_id": "identity_id",
    "code": "decision",
}
"""Column -> the body field it copies."""

WIDTHS = {"principal_id": 40, "actor": 40, "identity_id": 40, "code": 60}


def indexed_columns(body: dict[str, Any]) -> dict[str, str | None]:
    """The column values for ``body``: a string field is copied (cut to the column's width),
    anything else is NULL."""
    out: dict[str, str | None] = {}
    for column, field in COLUMNS.items():
        value = body.get(field)
        out[column] = value[: WIDTHS[column]] if isinstance(value, str) else None
    return out
