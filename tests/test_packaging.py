"""The explicit package lists in both pyproject.toml files cover every package.

Editable installs map whole directories, so a subpackage missing from a list
only shows up in a real (wheel) install; these checks catch it earlier.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _pyproject(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


SERVICE = _pyproject(ROOT / "pyproject.toml")
CLIENT = _pyproject(ROOT / "clients" / "pyproject.toml")


def _packages_under(directory: Path, name: str) -> set[str]:
    found = set()
    for init in directory.rglob("__init__.py"):
        if "__pycache__" in init.parts:
            continue
        relative = init.parent.relative_to(directory).parts
        found.add(".".join((name, *relative)))
    return found


def test_service_lists_every_package() -> None:
    setuptools = SERVICE["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk: set[str] = set()
    for package, directory in setuptools["package-dir"].items():
        on_disk |= _packages_under(ROOT / directory, package)
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"


def test_client_lists_every_package() -> None:
    listed = set(CLIENT["tool"]["setuptools"]["packages"])
    on_disk = _packages_under(ROOT / "clients" / "batchd", "batchd") - {"batchd"}
    assert on_disk <= listed, f"add to clients/pyproject.toml packages: {sorted(on_disk - listed)}"


def test_batchd_is_a_namespace_package() -> None:
    assert not (ROOT / "clients" / "batchd" / "__init__.py").exists()


def test_lua_scripts_are_package_data() -> None:
    lua_dir = ROOT / "core" / "lua"
    nested = [p for p in lua_dir.rglob("*.lua") if p.parent != lua_dir]
    assert "lua/*.lua" in SERVICE["tool"]["setuptools"]["package-data"]["batchd.core"]
    assert not nested, f"package-data only ships core/lua/*.lua, not {nested}"


def test_service_pins_the_client_at_its_own_version() -> None:
    version = SERVICE["project"]["version"]
    assert CLIENT["project"]["version"] == version
    assert f"batchd-client=={version}" in SERVICE["project"]["dependencies"]
