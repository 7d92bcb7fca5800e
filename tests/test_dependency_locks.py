"""The locked dependency sets agree with both pyproject.toml files.

scripts/lock writes requirements/dev.txt (what scripts/bootstrap installs) and
requirements/service.txt (what a server host installs) from the dependencies declared in
pyproject.toml and clients/pyproject.toml. A dependency added, dropped below a new floor
or re-pinned there without running scripts/lock fails here, offline, before an install
from the locks goes without it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DEV_LOCK = ROOT / "requirements" / "dev.txt"
SERVICE_LOCK = ROOT / "requirements" / "service.txt"
LOCAL = {canonicalize_name("batchd"), canonicalize_name("batchd-client")}
SHA256 = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def _pyproject(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


SERVICE = _pyproject(ROOT / "pyproject.toml")
CLIENT = _pyproject(ROOT / "clients" / "pyproject.toml")


@dataclass(frozen=True)
class Locked:
    """One entry of a lock: a pinned version, under a marker for some environments."""

    requirement: Requirement
    version: Version
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[NormalizedName, list[Locked]]:
    """The lock's entries by name (a name locked at two versions under exclusive markers
    has two); a line that is not a pinned requirement fails the test."""
    entries: dict[NormalizedName, list[Locked]] = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = re.split(r"\s+(?=--hash=)", line)
        requirement = Requirement(spec)
        (pin,) = requirement.specifier
        assert pin.operator == "==", f"{path.name}: not pinned: {line[:80]}"
        locked = Locked(requirement, Version(pin.version), tuple(hashes))
        entries.setdefault(canonicalize_name(requirement.name), []).append(locked)
    return entries


def declared(*, dev: bool) -> list[Requirement]:
    """What the lock must hold: both distributions' dependencies (but each other) and
    build requirements, the extras `all` names (the service lock holds `all`), and with
    `dev` every extra."""
    extras = SERVICE["project"]["optional-dependencies"]
    (everything,) = extras["all"]
    held = set(extras) if dev else Requirement(everything).extras
    specs = [
        *SERVICE["project"]["dependencies"],
        *CLIENT["project"]["dependencies"],
        *SERVICE["build-system"]["requires"],
        *CLIENT["build-system"]["requires"],
        *(spec for name in held for spec in extras[name]),
    ]
    requirements = [Requirement(spec) for spec in specs]
    return [r for r in requirements if canonicalize_name(r.name) not in LOCAL]


LOCKS = [pytest.param(DEV_LOCK, True, id="dev"), pytest.param(SERVICE_LOCK, False, id="service")]


@pytest.mark.parametrize(("lock", "dev"), LOCKS)
def test_the_lock_holds_every_declared_dependency(lock: Path, dev: bool) -> None:
    entries = read_lock(lock)
    stale = []
    for requirement in declared(dev=dev):
        found = entries.get(canonicalize_name(requirement.name), [])
        versions = [str(e.version) for e in found]
        if not found:
            stale.append(f"{requirement} is not locked")
        elif not all(requirement.specifier.contains(e.version, prereleases=True) for e in found):
            stale.append(f"{requirement} is locked at {', '.join(versions)}")
    assert not stale, (
        f"{lock.relative_to(ROOT)} is out of step with pyproject.toml: {'; '.join(stale)}."
        " Run scripts/lock and commit what it writes."
    )


@pytest.mark.parametrize(("lock", "dev"), LOCKS)
def test_every_locked_entry_is_pinned_and_hashed(lock: Path, dev: bool) -> None:
    entries = read_lock(lock)
    unhashed = [
        str(e.requirement)
        for found in entries.values()
        for e in found
        if not e.hashes or not all(SHA256.fullmatch(h) for h in e.hashes)
    ]
    assert unhashed == [], f"{lock.relative_to(ROOT)}: entries without sha256 hashes"
    # The local distributions install from the checkout, never from an index.
    assert LOCAL.isdisjoint(entries)


def test_the_service_lock_is_the_dev_lock_restricted_to_the_service() -> None:
    dev = read_lock(DEV_LOCK)
    service = read_lock(SERVICE_LOCK)
    differ = [name for name, found in service.items() if dev.get(name) != found]
    assert differ == [], (
        f"requirements/service.txt locks {differ} otherwise than requirements/dev.txt."
        " Run scripts/lock, which writes both."
    )
    assert "pytest" not in service  # the dev tools stay off a server host
