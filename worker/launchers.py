"""Console scripts of the workloads: each imports its workload only when run, so that
without the workload's extra it says which to install rather than print a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["migrate_plan"]

# The modules record.migrate's extra brings (batchd[migrate]).
_MIGRATE_MODULES = frozenset({"sqlalchemy", "asyncpg", "aiomysql", "aiosqlite", "greenlet"})


def migrate_plan(argv: Sequence[str] | None = None) -> int:
    """`batchd-migrate-plan` (batchd.worker.handlers.migrate.plan)."""
    try:
        from batchd.worker.handlers.migrate.plan import main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _MIGRATE_MODULES:
            raise
        print(
            f"batchd-migrate-plan: needs the migrate extra ({exc.name} is not installed): "
            "pip install 'batchd[migrate]'",
            file=sys.stderr,
        )
        return 2
    return main(argv)
