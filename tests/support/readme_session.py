"""A README shell session (`$ command` lines, each followed by what it prints) read into
steps, and run step by step in a shell as a user would paste it."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

BATCH_ID = re.compile(r"\b[0-9a-f]{32}\b")


@dataclass
class Step:
    command: str  # as written, continuation lines included
    output: list[str]  # the lines the README shows after it ("..." elides some)

    @property
    def background(self) -> bool:
        """The command ends in `&` (before any comment): it runs on beside the others."""
        return shlex.split(self.command, comments=True)[-1:] == ["&"]


def _complete(command: str) -> bool:
    """The command's quotes are closed and it does not end in a line continuation."""
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def read_session(block: str) -> list[Step]:
    """The steps of a ```sh block written as a terminal session: a command starts with
    `$ ` and runs on over the lines that close its quotes; the lines up to the next
    command are its output (blank lines dropped)."""
    steps: list[Step] = []
    pending: str | None = None
    for line in block.splitlines():
        if pending is not None:
            pending += "\n" + line
            if _complete(pending):
                steps.append(Step(pending, []))
                pending = None
        elif line.startswith("$ "):
            if _complete(line[2:]):
                steps.append(Step(line[2:], []))
            else:
                pending = line[2:]
        elif line.strip():
            assert steps, f"output before any command: {line!r}"
            steps[-1].output.append(line)
    assert pending is None, f"unterminated command: {pending!r}"
    return steps


def sh_blocks_after(text: str, heading: str) -> list[str]:
    """The ```sh blocks of the section that starts at `heading`, up to the next heading
    of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    section = text.split(heading + "\n", 1)[1]
    end = re.search(rf"^#{{1,{len(level)}}} ", section, re.MULTILINE)
    section = section[: end.start()] if end else section
    return re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
