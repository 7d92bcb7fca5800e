"""The layers of docs/design.md, held by the imports: `server` and `worker` depend on
`core` and never on each other, `core` on neither, the client distribution on nothing of
the service, and no part of a running service on `batchd.testing`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Directory -> the batchd packages its modules may not import.
FORBIDDEN = {
    "core": ("batchd.server", "batchd.worker", "batchd.testing", "batchd.cli"),
    "server": ("batchd.worker", "batchd.testing", "batchd.cli"),
    "worker": ("batchd.server", "batchd.testing", "batchd.cli"),
    "clients/batchd": ("batchd.core", "batchd.server", "batchd.worker", "batchd.testing"),
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("directory", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_is_below_it(directory: str) -> None:
    crossings = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / directory).rglob("*.py")
        for name in imported(path)
        if any(
            name == package or name.startswith(f"{package}.") for package in FORBIDDEN[directory]
        )
    )
    assert crossings == []
