"""Alembic environment of the connectors service; see overture_runtime.db."""

from overture_connectors.tables import metadata
from overture_runtime.db import run_migrations_in_env

run_migrations_in_env(metadata)
