"""The shell blocks of the README beyond "Using it", and of the docs pages it hands its
examples to, run as written, in a scratch directory, against a real service and real
local peers: server and worker started separately on a private Valkey, and workers added
to a running `./scripts/run` (docs/operations.md); email.send through the aiosmtpd sink
its example starts, record.migrate between SQLite files, image.resize from a local HTTP
peer (the "Example" of each of docs/handlers/email.md, migrate.md and image.md), and
email.send held to a relay's rate (email.md's "Rate limiting"); and the README's
development commands. Each test reads its block from the page, so a changed
command is run as changed, and a command added or removed fails it. The grpcurl blocks
of docs/api.md and docs/security.md are tests/e2e/test_readme_grpcurl.py's.

Not run, on purpose:
- `./scripts/run` (the README's first block; the workloads' `BATCHD_SMTP_URL=...
  ./scripts/run` and "with ./scripts/run going"): its bootstrap step installs into the
  venv this suite runs in. What it starts, `batchd-service` from the directory it is run
  in, is started here the same way (readme_service), with the environment the page
  gives it; tests/server/test_service.py runs the script itself.
- `./scripts/test` (and its fast tier, `-m "not slow"`): the suite would run itself.
- `./scripts/lint`: it judges the whole checkout, not the README (and takes a minute);
  every commit runs it.
- `./scripts/lock`: it resolves the dependencies against the package index;
  tests/test_dependency_locks.py checks, offline, that the locks it wrote agree with
  pyproject.toml.
- `make install | gen | lint | test | bench | run`: each verb calls a script (install:
  bootstrap, which reinstalls this venv; gen: bootstrap and the gen_protos command run
  here; lint, test, run: above; bench: minutes); checked to be the Makefile's verbs.
- docs/handlers.md's "In brief": the `pyproject.toml` entry point takes installing a
  distribution (tests/test_examples.py loads examples/greeter's), and the settings
  example is a fragment; its mypkg/handlers.py is the package the workers here load.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from support.net import find_free_port
from support.polling import poll
from support.readme_session import (
    CHECKOUT,
    DOCS,
    README,
    Expected,
    Shell,
    all_handlers_served,
    listening,
    live_workers,
    read_session,
    readme_service,
    run_session,
    sh_blocks_after,
    with_venv,
)
from support.redis_server import RedisServerFactory

from batchd.client import AsyncClient, BatchState

TEXT = README.read_text()
OPERATIONS = (DOCS / "operations.md").read_text()
HANDLERS = (DOCS / "handlers.md").read_text()
EMAIL, MIGRATE_DOC, IMAGE = (
    (DOCS / "handlers" / f"{n}.md").read_text() for n in ("email", "migrate", "image")
)
BUILTINS = ["email.send", "http.request", "image.resize", "noop", "record.migrate", "sleep"]


def own_handlers_package(root: Path) -> Path:
    """docs/handlers.md's mypkg/handlers.py written under `root`, importable as an installed
    package would be (`root` goes on PYTHONPATH)."""
    blocks = sh_blocks_after(HANDLERS, "## In brief", language="python")
    (module,) = [b for b in blocks if b.startswith("# mypkg/handlers.py\n")]
    (root / "mypkg").mkdir(parents=True)
    (root / "mypkg" / "handlers.py").write_text(module)
    return root


async def served_by(
    target: str, expected: dict[str, int], *jobs: asyncio.subprocess.Process
) -> bool | None:
    """A probe for `poll`: each named handler has exactly that many live workers (and
    every one of `jobs` still runs)."""
    assert all(job.returncode is None for job in jobs), "a process exited"
    workers = await live_workers(target)
    if workers is None or any(workers.get(n) != count for n, count in expected.items()):
        return None
    return True


async def runs_a_batch(target: str) -> None:
    async with AsyncClient(target) as client:
        batch = await client.submit("noop", [(f"n-{i}", {}) for i in range(10)])
        async for progress in client.watch(batch.batch.batch_id):
            final = progress
        assert final.state is BatchState.COMPLETED
        assert final.counts.succeeded == 10


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_server_and_workers_run_separately(
    redis_server_factory: RedisServerFactory, tmp_path: Path
) -> None:
    block = sh_blocks_after(OPERATIONS, "## Running server and workers separately")[0]
    steps = read_session(block, prompt="")
    assert [s.command.split()[0] for s in steps] == [
        "export", ".venv/bin/batchd-server", ".venv/bin/batchd-worker"
    ]  # fmt: skip
    redis = redis_server_factory()
    port = find_free_port()
    scratch = with_venv(own_handlers_package(tmp_path / "scratch"))
    env = {"PYTHONPATH": str(scratch), "BATCHD_HOST": "127.0.0.1"}  # loopback only
    async with Shell(scratch, env) as shell:
        shell.replacements["redis://redis.internal:6379/0"] = redis.url
        shell.replacements["--port 50051"] = f"--port {port}"
        assert (await shell.run(steps[0].command)).status == 0
        assert shell.env["BATCHD_REDIS_URL"] == redis.url
        server = await shell.start(steps[1].command, tmp_path / "server.log")
        worker = await shell.start(steps[2].command, tmp_path / "worker.log")
        target = f"127.0.0.1:{port}"
        await poll(lambda: served_by(target, {"geo.lookup": 1, "noop": 1}, server, worker), 30)
        await runs_a_batch(target)
        assert await shell.stop_job(2) == 0, (tmp_path / "worker.log").read_text()
        assert await shell.stop_job(1) == 0, (tmp_path / "server.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_workers_join_a_running_scripts_run(tmp_path: Path) -> None:
    block = sh_blocks_after(OPERATIONS, "## Running server and workers separately")[1]
    steps = read_session(block, prompt="")
    assert len(steps) == 2
    package = own_handlers_package(tmp_path / "site")
    with readme_service() as service:
        await poll(lambda: all_handlers_served(service.target), within=60)
        home = with_venv(service.home)  # `run from the same directory`: the checkout
        async with Shell(home, {"PYTHONPATH": str(package)}) as shell:
            jobs = [
                await shell.start(s.command, tmp_path / f"worker-{i}.log")
                for i, s in enumerate(steps)
            ]
            served = {**dict.fromkeys(BUILTINS, 3), "geo.lookup": 1}
            await poll(lambda: served_by(service.target, served, *jobs), within=30)
            await runs_a_batch(service.target)
            for number in (1, 2):
                log = tmp_path / f"worker-{number - 1}.log"
                assert await shell.stop_job(number) == 0, log.read_text()


async def sink_received(path: Path, count: int) -> str | None:
    """A probe for `poll`: the example's SMTP sink printed `count` messages."""
    text = await asyncio.to_thread(path.read_text, errors="replace")
    return text if text.count("---------- END MESSAGE ----------") >= count else None


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_email_send_workload(tmp_path: Path) -> None:
    sink_block, client_block = sh_blocks_after(EMAIL, "## Example")
    sink, run = read_session(sink_block, prompt="")
    assert sink.background
    steps = read_session(client_block, prompt="")
    assert [s.command.split()[:2] for s in steps] == [
        ["cd", '"$(mktemp'], ["python3", "-c"], ["batchd", "submit"], ["batchd", "items"]
    ]  # fmt: skip
    smtp_port = find_free_port()
    scratch = with_venv(tmp_path / "scratch")
    # The sink prints each message as it takes it (unbuffered: the test reads as it goes).
    async with Shell(scratch, {"PYTHONUNBUFFERED": "1"}) as shell:
        shell.replacements["8025"] = str(smtp_port)
        await shell.start(sink.command, tmp_path / "sink.log")
        await poll(lambda: listening(smtp_port))
        *assignments, script = shlex.split(shell.real(run.command))
        assert script == "./scripts/run"
        with readme_service(dict(a.split("=", 1) for a in assignments)) as service:
            await poll(lambda: all_handlers_served(service.target), within=60)
            shell.env["BATCHD_TARGET"] = service.target
            assert (await shell.run(steps[1].command)).status == 0
            submitted = await shell.run(steps[2].command)
            assert submitted.status == 0, submitted.context
            assert "COMPLETED 1000/1000 (100.0%) succeeded=1000 failed=0" in submitted.out
            shell.replacements["BATCH_ID"] = submitted.out.splitlines()[0]
            failed = await shell.run(steps[3].command)
            assert (failed.status, failed.out + failed.err) == (0, "no items\n"), failed.context
            printed = await poll(lambda: sink_received(tmp_path / "sink.log", 1000))
    assert printed.count("---------- END MESSAGE ----------") == 1000
    assert "Subject: User 7, our winter sale" in printed
    assert "To: user-7@example.com" in printed
    assert "From: Shop <news@shop.example>" in printed


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_email_send_held_to_a_relays_rate(tmp_path: Path) -> None:
    """ "Rate limiting": the example's items (its first hundred) submitted with a rate and
    a key of the relay's; the batch keeps both and every message reaches the sink."""
    sink_block, client_block = sh_blocks_after(EMAIL, "## Example")
    sink, run = read_session(sink_block, prompt="")
    make_items = read_session(client_block, prompt="")[1]
    (limited,) = read_session(sh_blocks_after(EMAIL, "## Rate limiting")[0], prompt="")
    smtp_port = find_free_port()
    scratch = with_venv(tmp_path / "scratch")
    async with Shell(scratch, {"PYTHONUNBUFFERED": "1"}) as shell:
        shell.replacements["8025"] = str(smtp_port)
        await shell.start(sink.command, tmp_path / "sink.log")
        await poll(lambda: listening(smtp_port))
        *assignments, _ = shlex.split(shell.real(run.command))
        with readme_service(dict(a.split("=", 1) for a in assignments)) as service:
            await poll(lambda: all_handlers_served(service.target), within=60)
            shell.env["BATCHD_TARGET"] = service.target
            assert (await shell.run(make_items.command)).status == 0
            lines = (scratch / "items.jsonl").read_text().splitlines(keepends=True)
            (scratch / "items.jsonl").write_text("".join(lines[:100]))
            submitted = await shell.run(limited.command)
            assert submitted.status == 0, submitted.context
            (batch_id,) = submitted.out.split()
            got = await shell.run(f"batchd get {batch_id} --json")
            assert got.status == 0, got.context
            options = json.loads(got.out)["options"]
            assert options["max_per_second"] == 50, got.context
            assert options["rate_limit_key"] == "smtp:relay.example:587", got.context
            printed = await poll(lambda: sink_received(tmp_path / "sink.log", 100), within=60)
    assert printed.count("---------- END MESSAGE ----------") == 100


MIGRATE: Expected = [
    ("python3 - <<'PY'", 0, []),
    (
        'BATCHD_DATABASES="src=sqlite:///$PWD/src.db,dst=sqlite:///$PWD/dst.db"',
        0,
        ["people: 20000 rows in 4 items of up to 5000", "COMPLETED 4/4 (100.0%) succeeded=4"],
    ),
    (
        "batchd items",
        0,
        [
            '0 people.1-5000            SUCCEEDED      1 {"rows":5000,"written":5000,"skipped":0,',
            '"match":true}',
        ],
    ),
    ("sqlite3 dst.db", 0, "exact"),
]


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_record_migrate_workload(tmp_path: Path) -> None:
    (block,) = sh_blocks_after(MIGRATE_DOC, "## Example")
    # The service started from the session's directory with the session's databases.
    databases = f"src=sqlite:///{tmp_path}/src.db,dst=sqlite:///{tmp_path}/dst.db"
    with readme_service({"BATCHD_DATABASES": databases}) as service:
        await poll(lambda: all_handlers_served(service.target), within=60)
        async with Shell(tmp_path, {"BATCHD_TARGET": service.target}) as shell:
            await run_session(shell, read_session(block), MIGRATE)


VARIANTS = ["photo-0.large.jpg", "photo-0.thumb.webp", "photo-1.large.jpg", "photo-1.thumb.webp"]
IMAGES: Expected = [
    ('cd "$(mktemp -d)"', 0, []),
    ("python3 -m http.server 8000 --bind 127.0.0.1", 0, []),
    ("python3 -c 'from PIL import Image", 0, []),
    ("python3 -c 'import json", 0, []),
    ("batchd submit image.resize images.jsonl --watch", 0, ["COMPLETED 2/2 (100.0%) succeeded=2"]),
    ('ls "$OLDPWD/.data/images/user-42/"', 0, VARIANTS),
    ("batchd items <batch id>", 0, ["photo-0", "SUCCEEDED", '"variants":[{"name":"thumb"']),
    ("kill %1", 0, []),
]


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_image_resize_workload(tmp_path: Path) -> None:
    (block,) = sh_blocks_after(IMAGE, "## Example")
    peer_port = find_free_port()
    with readme_service() as service:
        await poll(lambda: all_handlers_served(service.target), within=60)
        # The session starts from the checkout the service runs in: $OLDPWD after its `cd`.
        env = {"BATCHD_TARGET": service.target, "OLDPWD": str(service.home)}
        async with Shell(tmp_path, env) as shell:
            shell.replacements["8000"] = str(peer_port)
            shell.placeholder = "<batch id>"
            await run_session(shell, read_session(block), IMAGES, lambda: listening(peer_port))
        written = service.home / ".data" / "images" / "user-42"
        assert sorted(p.name for p in written.iterdir()) == VARIANTS
        sizes = {name: image_size(written / name) for name in VARIANTS}
    assert sizes == {
        "photo-0.large.jpg": (800, 600),  # inside 800 wide, aspect kept
        "photo-0.thumb.webp": (128, 128),  # cover: exact, centre-cropped
        "photo-1.large.jpg": (800, 1244),
        "photo-1.thumb.webp": (128, 128),
    }


# "Development": the commands run here, and those deliberately not (see the module's
# docstring): a command added to the block fails this test until it is sorted into one.
NOT_RUN = {
    "./scripts/test": "the suite would run itself",
    './scripts/test -m "not slow"': "the suite would run itself (its fast tier)",
    "./scripts/lint": "judges the checkout, run before every commit",
    "./scripts/lock": "reaches the package index; tests/test_dependency_locks.py checks the locks",
    "make install | gen | lint | test | bench | run": "the Makefile's verbs, checked below",
}
GEN_PROTOS = ".venv/bin/python scripts/gen_protos.py"


@pytest.mark.timeout(60)
def test_development_commands(tmp_path: Path) -> None:
    (block,) = sh_blocks_after(TEXT, "## Development")
    commands = [shlex.split(s.command, comments=True) for s in read_session(block, prompt="")]
    listed = [*list(NOT_RUN)[:3], GEN_PROTOS, *list(NOT_RUN)[3:]]
    assert commands == [shlex.split(command) for command in listed]
    # gen_protos rewrites the stubs beside it: run it in a copy of what it reads and writes.
    copy = with_venv(tmp_path / "checkout")
    parts = ["scripts/gen_protos.py", "scripts/npm_ci.py", "buf.yaml", "buf.gen.yaml"]
    parts += ["proto", "third_party", "clients/batchd/v1", "clients/typescript"]
    skip_npm = shutil.ignore_patterns("node_modules", "dist", ".build.lock")
    for part in parts:
        source, target = CHECKOUT / part, copy / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=skip_npm)
        else:
            shutil.copyfile(source, target)
    # The npm packages as installed for the checkout (scripts/test's gen_protos --check
    # installs them), not installed again.
    node_modules = CHECKOUT / "clients" / "typescript" / "node_modules"
    if node_modules.is_dir():
        (copy / "clients" / "typescript" / "node_modules").symlink_to(node_modules)
    ran = subprocess.run(GEN_PROTOS, shell=True, cwd=copy, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    typescript = "gen_protos: wrote clients/typescript/src/gen\n" if shutil.which("npm") else ""
    assert ran.stdout == "gen_protos: wrote clients/batchd/v1 (0 file(s) changed)\n" + typescript
    committed = CHECKOUT / "clients" / "batchd" / "v1"
    for stub in committed.glob("*_pb2*.py*"):
        assert (copy / "clients" / "batchd" / "v1" / stub.name).read_bytes() == stub.read_bytes()
    generated = CHECKOUT / "clients" / "typescript" / "src" / "gen"
    for ts in generated.rglob("*.ts"):
        fresh = copy / ts.relative_to(CHECKOUT)
        assert not typescript or fresh.read_bytes() == ts.read_bytes()
    # make's verbs, as the README lists them, are the Makefile's.
    verbs = [word for word in commands[-1][1:] if word != "|"]
    phony = re.search(r"^\.PHONY: (.*)$", (CHECKOUT / "Makefile").read_text(), re.MULTILINE)
    assert phony is not None
    assert sorted(verbs) == sorted(phony.group(1).split())
