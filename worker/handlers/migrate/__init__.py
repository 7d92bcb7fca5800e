"""`record.migrate`: copies primary-key ranges of a table to another database.

Needs the `migrate` extra (`pip install 'batchd[migrate]'`: SQLAlchemy and the asyncpg,
aiomysql and aiosqlite drivers). The handler is record.py, its transform hook
transform.py (`row_transform` declares one), and plan.py is `batchd-migrate-plan`, which
cuts the ranges; docs/handlers/migrate.md is the reference.
"""

from __future__ import annotations

from batchd.worker.handlers.migrate.record import (
    PARAMS_SCHEMA,
    MigrateSettings,
    record_migrate_handler,
)
from batchd.worker.handlers.migrate.transform import row_transform

__all__ = ["PARAMS_SCHEMA", "MigrateSettings", "record_migrate_handler", "row_transform"]
