"""README and docs shell blocks read into steps and run as a user would paste them: a session
(`$ command` lines, each followed by what it prints) or a plain block of commands, in a
scratch directory, against `batchd-service` started as `./scripts/run` starts it."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from batchd.client import AsyncClient, BatchdError
from support.net import find_free_port
from support.polling import poll
from support.processes import ServiceProcess

BATCH_ID = re.compile(r"\b[0-9a-f]{32}\b")
CHECKOUT = Path(__file__).resolve().parents[2]
README = CHECKOUT / "README.md"
DOCS = CHECKOUT / "docs"
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
JOB = re.compile(r"kill %(\d+)")
TIMES = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+Z)?")


@dataclass
class Step:
    command: str  # as written, continuation lines included
    output: list[str]  # the lines the README shows after it ("..." elides some)

    @property
    def background(self) -> bool:
        """The command ends in `&` (before any comment): it runs on beside the others."""
        return shlex.split(self.command, comments=True)[-1:] == ["&"]


def _complete(command: str) -> bool:
    """The command's quotes and here-document are closed and it does not end in a line
    continuation."""
    lines = command.splitlines()
    heredoc = HEREDOC.search(lines[0])
    if heredoc:
        return len(lines) > 1 and lines[-1] == heredoc.group(2)
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def read_session(block: str, prompt: str = "$ ") -> list[Step]:
    """The steps of a ```sh block written as a terminal session: a command starts with
    `$ ` and runs on over the lines that close its quotes or here-document; the lines up
    to the next command are its output (blank lines dropped). With `prompt=""` the block
    is plain commands, none of them followed by output."""
    steps: list[Step] = []
    pending: str | None = None
    for line in block.splitlines():
        if pending is not None:
            pending += "\n" + line
            if _complete(pending):
                steps.append(Step(pending, []))
                pending = None
        elif line.startswith(prompt) and (prompt or line.strip()):
            if _complete(line[len(prompt) :]):
                steps.append(Step(line[len(prompt) :], []))
            else:
                pending = line[len(prompt) :]
        elif line.strip():
            assert steps, f"output before any command: {line!r}"
            steps[-1].output.append(line)
    assert pending is None, f"unterminated command: {pending!r}"
    return steps


def sh_blocks_after(text: str, heading: str, language: str = "sh") -> list[str]:
    """The ```sh (or other `language`) blocks of the section that starts at `heading`, up
    to the next heading of the same or a higher level."""
    level = len(heading.split(" ", 1)[0])
    lines: list[str] = []
    fenced = False  # a `# comment` in a code block is no heading
    for line in text.split(heading + "\n", 1)[1].splitlines(keepends=True):
        fenced ^= line.startswith("```")
        if not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        lines.append(line)
    return re.findall(rf"```{language}\n(.*?)```", "".join(lines), re.DOTALL)


@dataclass
class Ran:
    command: str  # as run, placeholders replaced
    status: int
    out: str
    err: str

    @property
    def context(self) -> str:
        return f"$ {self.command}\n{self.out}{self.err}"


def check_output(ran: Ran, shown: str, expected: list[str] | str) -> None:
    """What a command printed holds each of `expected`, and so does what the README shows
    (if it shows anything); "exact": it printed what the README shows, times aside."""
    if expected == "exact":
        printed = TIMES.sub("<time>", ran.out + ran.err).splitlines()
        assert printed == TIMES.sub("<time>", shown).splitlines(), ran.context
        return
    for key in expected:
        assert key in ran.out + ran.err, f"{key!r} not in:\n{ran.context}"
        assert not shown or key in shown, f"{key!r} not shown after {ran.command}"


class Shell:
    """Runs README commands one by one in `cwd` with the venv's commands on PATH. Each
    command runs in a bash of its own, so the shell's own state is kept here: `export`
    sets a variable for the commands after it, `&` starts a job and `kill %N` stops it.
    `replacements` turn what the README shows (ports, batch ids, placeholders) into
    this run's values, in the order they were added."""

    def __init__(self, cwd: Path, env: Mapping[str, str]) -> None:
        self.cwd = cwd
        venv_bin = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": os.pathsep.join([venv_bin, os.environ["PATH"]]), **env}
        self.replacements: dict[str, str] = {}
        self.placeholder: str | None = None  # the README's name for an id it does not show
        self.jobs: list[asyncio.subprocess.Process] = []

    def real(self, text: str) -> str:
        for shown, real in self.replacements.items():
            text = text.replace(shown, real)
        return text

    def learn_ids(self, shown: list[str], out: str) -> None:
        """The batch id a README output shows (else its placeholder) stands for the one
        this run printed."""
        shown_ids = [line for line in shown if BATCH_ID.fullmatch(line)]
        printed = [line for line in out.splitlines() if BATCH_ID.fullmatch(line)]
        readme_id = shown_ids[0] if shown_ids else self.placeholder
        if readme_id and printed:
            self.replacements[readme_id] = printed[0]

    async def run(self, command: str, within: float = 60) -> Ran:
        command = self.real(command)
        words = shlex.split(command, comments=True)
        if words[:1] == ["export"]:
            self.env.update(word.split("=", 1) for word in words[1:])  # type: ignore[misc]
            return Ran(command, 0, "", "")
        job = JOB.fullmatch(" ".join(words))
        if job:
            await self.stop_job(int(job.group(1)))
            return Ran(command, 0, "", "")
        process = await asyncio.create_subprocess_exec(
            "bash", "-c", command, cwd=self.cwd, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), within)
        assert process.returncode is not None
        return Ran(command, process.returncode, out.decode(), err.decode())

    async def start(self, command: str, output: Path | None = None) -> asyncio.subprocess.Process:
        """Starts `command` as a job (its own process group); its output goes to
        `output`, or nowhere."""
        sink = os.open(output or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            process = await asyncio.create_subprocess_exec(
                "bash", "-c", self.real(command), cwd=self.cwd, env=self.env,
                stdout=sink, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(sink)
        self.jobs.append(process)
        return process

    async def stop_job(self, number: int) -> int:
        """SIGTERM to job `number` (from 1, as `kill %N`); the job's exit status."""
        process = self.jobs[number - 1]
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
        return await process.wait()

    async def __aenter__(self) -> Shell:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for number in range(1, len(self.jobs) + 1):
            await self.stop_job(number)


async def listening(port: int) -> bool | None:
    """A probe for `poll`: True once something accepts connections on the port."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    writer.close()
    await writer.wait_closed()
    return True


async def live_workers(target: str) -> dict[str, int] | None:
    """Each published handler's live workers, as `batchd handlers` shows them."""
    try:
        async with AsyncClient(target) as client:
            return {h.name: h.live_workers for h in await client.handlers()}
    except BatchdError:
        return None


async def all_handlers_served(target: str) -> bool | None:
    """A probe for `poll`: every built-in handler has a live worker."""
    workers = await live_workers(target)
    return True if workers and len([n for n in workers.values() if n]) >= 6 else None


@dataclass
class Service:
    target: str  # host:port of its gRPC server
    home: Path  # the directory it was started from: .data/ holds its Valkey and images


@contextmanager
def readme_service(env: Mapping[str, str] | None = None) -> Iterator[Service]:
    """`./scripts/run` as a user starts it: batchd-service with its embedded Valkey, its
    data and images under `.data/` of the directory it was started from (here a short
    private one: a unix socket path has a length limit), on a free port. Stopped with
    SIGTERM at the end, and it must exit 0."""
    home = Path(tempfile.mkdtemp(prefix="batchd-readme-"))
    port = find_free_port()
    settings = {
        "BATCHD_DATA_DIR": str(home / ".data"),
        "BATCHD_IMAGE_OUTPUT_DIR": str(home / ".data" / "images"),
        "BATCHD_HOST": "127.0.0.1",
        "BATCHD_PORT": str(port),
        # The README's local peers (its sessions move port 8000 to a free one).
        "BATCHD_EGRESS_ALLOW": "127.0.0.1",
        **(env or {}),
    }
    process = ServiceProcess("batchd.server.service", settings, home / "service.log").start()
    try:
        yield Service(f"127.0.0.1:{port}", home)
        assert process.terminate() == 0, process.log_tail()
    finally:
        process.stop()
        shutil.rmtree(home, ignore_errors=True)


def with_venv(directory: Path) -> Path:
    """`directory` as a checkout looks to commands run in it: `.venv/` is there."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".venv").symlink_to(Path(sys.executable).parents[1])
    return directory


Expected = list[tuple[str, int, list[str] | str]]


async def run_session(
    shell: Shell,
    steps: list[Step],
    expected: Expected,
    ready: Callable[[], Awaitable[bool | None]] | None = None,
) -> None:
    """Runs a README session's steps and checks each against `expected`: how the command
    starts, its exit status, what its output holds (check_output). `cd` steps are
    skipped (the shell is in its scratch directory already); a background step is
    started, then awaited until `ready`."""
    assert len(steps) == len(expected), [step.command for step in steps]
    for step, (start, _, _) in zip(steps, expected, strict=True):
        assert step.command.startswith(start), f"README: {step.command!r}, expected: {start!r}"
    for step, (_, status, keys) in zip(steps, expected, strict=True):
        if step.command.startswith("cd "):
            continue
        if step.background:
            await shell.start(step.command)
            if ready is not None:
                await poll(ready)
            continue
        ran = await shell.run(step.command)
        assert ran.status == status, ran.context
        shell.learn_ids(step.output, ran.out)
        check_output(ran, shell.real("\n".join(step.output)), keys)
