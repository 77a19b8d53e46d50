"""Alembic environment: always driven programmatically by gateway.storage.db.migrate,
which hands over a live (sync-facing) connection of the async engine."""

from alembic import context

from consentry.gateway.storage.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
