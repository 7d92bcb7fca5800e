"""docs/handlers/migrate.md's shell blocks beyond its SQLite "Example"
(tests/e2e/test_readme_commands.py runs that) run as written against a service started
as `./scripts/run` starts it and the local databases: "Databases, engines and settings"'s
`BATCHD_DATABASES`, its MySQL URL standing for a fresh database on the local MariaDB and
its PostgreSQL URL for one on the local PostgreSQL; "With databases of your own" copying
`customers` from the one to the other, a row the destination's CHECK refuses failing its
range; "Redrive" finding that range, the row fixed in the source, the batch retried to
completion; and the planner's synopsis, which is its `--help` usage."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from support.polling import poll
from support.readme_session import (
    DOCS,
    Ran,
    Shell,
    all_handlers_served,
    read_session,
    readme_service,
    sh_blocks_after,
    with_venv,
)
from workloads.migrate_fixtures import engine_for, mariadb_database, postgres_database

MIGRATE = (DOCS / "handlers" / "migrate.md").read_text()
ROWS, BAD_KEY = 12_000, 3210  # three ranges of up to 5000; the refused row in the first


def steps(heading: str) -> list[str]:
    (block,) = sh_blocks_after(MIGRATE, heading)
    return [s.command for s in read_session(block, prompt="") if shlex.split(s.command, True)]


async def run(shell: Shell, command: str, status: int = 0) -> Ran:
    # A deadline for a hang, not a speed target: `submit --watch` of the 12,000 rows
    # takes several times longer on two cores shared with other test runs.
    ran = await shell.run(command, within=180)
    assert ran.status == status, ran.context
    return ran


async def make_tables(legacy: str, warehouse: str) -> None:
    """customers in legacy (MariaDB), ROWS of them, the one at BAD_KEY with a negative
    credit; an empty customers in warehouse (PostgreSQL) whose CHECK refuses that."""
    columns = "id INTEGER PRIMARY KEY, name VARCHAR(64) NOT NULL, credit INTEGER NOT NULL"
    source = engine_for(legacy)
    async with source.begin() as conn:
        await conn.execute(text(f"CREATE TABLE customers ({columns})"))
        rows = [
            {"id": i, "name": f"customer {i}", "credit": -1 if i == BAD_KEY else i % 100}
            for i in range(1, ROWS + 1)
        ]
        await conn.execute(text("INSERT INTO customers VALUES (:id, :name, :credit)"), rows)
    await source.dispose()
    destination = engine_for(warehouse)
    async with destination.begin() as conn:
        check = "CONSTRAINT customers_credit_ok CHECK (credit >= 0)"
        await conn.execute(text(f"CREATE TABLE customers ({columns}, {check})"))
    await destination.dispose()


async def fix_the_row(legacy: str) -> None:
    source = engine_for(legacy)
    async with source.begin() as conn:
        await conn.execute(text("UPDATE customers SET credit = 0 WHERE id = :id"), {"id": BAD_KEY})
    await source.dispose()


async def copied(warehouse: str) -> tuple[int, int]:
    destination = engine_for(warehouse)
    async with destination.connect() as conn:
        count, total = (
            await conn.execute(text("SELECT count(*), sum(credit) FROM customers"))
        ).one()
    await destination.dispose()
    return count, total


@pytest.mark.slow
@pytest.mark.timeout(360)
async def test_a_migration_between_databases_of_your_own_and_its_redrive(tmp_path: Path) -> None:
    (setting,) = steps("## Databases, engines and settings")
    plan_and_submit, failed, checksums = steps("## With databases of your own")
    again, retry = steps("## Redrive")
    assert shlex.split(again, comments=True) == shlex.split(failed, comments=True)
    async with mariadb_database() as legacy, postgres_database() as warehouse:
        await make_tables(legacy, warehouse)
        scratch = with_venv(tmp_path / "scratch")
        async with Shell(scratch, {}) as shell:
            shell.replacements["mysql://app:secret@db1/shop"] = legacy
            shell.replacements["postgresql://etl@db2/dw"] = warehouse
            # An assignment, set for the workers (the service) and the planner alike.
            ((name, value),) = [w.split("=", 1) for w in shlex.split(shell.real(setting))]
            assert (name, value) == ("BATCHD_DATABASES", f"legacy={legacy},warehouse={warehouse}")
            shell.env[name] = value
            with readme_service({name: value}) as service:
                await poll(lambda: all_handlers_served(service.target), within=60)
                shell.env["BATCHD_TARGET"] = service.target

                # --watch exits 1: an item failed.
                ran = await run(shell, plan_and_submit, status=1)
                assert "customers: 12000 rows in 3 items of up to 5000" in ran.err, ran.context
                batch_id = ran.out.splitlines()[0]
                assert re.fullmatch("[0-9a-f]{32}", batch_id), ran.context
                assert "succeeded=2 failed=1" in ran.out, ran.context
                shell.replacements["BATCH_ID"] = batch_id

                for listing in (failed, again):
                    ran = await run(shell, listing)
                    (row,) = ran.out.splitlines()[1:]
                    assert row.split()[1:3] == ["customers.1-5000", "FAILED"], ran.context
                    assert "FAILED_PRECONDITION" in row, ran.context
                    assert f"key={BAD_KEY}" in row, ran.context
                ran = await run(shell, checksums)
                assert ran.out.split("\n").count("null") == 1, ran.context  # the failed range

                await fix_the_row(legacy)
                ran = await run(shell, retry)
                assert "COMPLETED 3/3 (100.0%) succeeded=3 failed=0" in ran.out, ran.context

                ran = await run(shell, checksums)
                sums = ran.out.split()
                assert len(sums) == 3, ran.context
                assert "null" not in sums, ran.context
                ran = await run(shell, f"batchd items {batch_id} --json")
                outputs = [json.loads(line)["output"] for line in ran.out.splitlines()]
                assert [o["match"] for o in outputs] == [True] * 3
                assert sums == [o["destination_checksum"] for o in outputs]
        assert await copied(warehouse) == (
            ROWS,
            sum(i % 100 for i in range(1, ROWS + 1)) - BAD_KEY % 100,
        )


def flags(usage: str) -> tuple[list[str], list[str], list[str]]:
    """A synopsis's positionals, required flags and optional flags."""
    optional = re.findall(r"\[(--[\w-]+)", usage)
    bare = re.sub(r"\[[^\]]*\]", "", usage).split()
    required = [w for w in bare if w.startswith("--")]
    values = {i + 1 for i, w in enumerate(bare) if w.startswith("--")}  # DEST of --destination
    positional = [w for i, w in enumerate(bare[1:], 1) if i not in values and w[0] != "-"]
    return positional, required, sorted(optional)


@pytest.mark.slow
def test_the_planners_synopsis_is_its_usage() -> None:
    """The synopsis (a ```text block: placeholders, not a command) names the flags the
    command has, each required or optional as it is, and its output goes to a file."""
    (synopsis,) = sh_blocks_after(MIGRATE, "## Planning: `batchd-migrate-plan`", "text")
    command, output = synopsis.split(" > ")
    assert output.split() == ["items.jsonl"]
    ran = subprocess.run(
        [Path(sys.executable).parent / "batchd-migrate-plan", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    usage = ran.stdout.split("\n\n", 1)[0].removeprefix("usage: ").replace("[-h] ", "")
    assert (
        flags(command)
        == flags(usage)
        == (
            ["SOURCE", "TABLE"],
            ["--destination"],
            sorted(
                [
                    "--destination-table",
                    "--key",
                    "--rows-per-item",
                    "--columns",
                    "--transform",
                    "--on-mismatch",
                ]
            ),
        )
    )
