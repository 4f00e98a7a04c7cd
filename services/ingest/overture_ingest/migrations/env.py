"""Alembic environment of the ingest service; see overture_runtime.db."""

from overture_ingest.tables import metadata
from overture_runtime.db import run_migrations_in_env

run_migrations_in_env(metadata)
