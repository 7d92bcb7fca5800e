#!/usr/bin/env python3
"""Install clients/typescript/'s npm packages from its lock file, once per lock.

    .venv/bin/python scripts/npm_ci.py   # npm ci, unless node_modules matches the lock

`npm ci` installs exactly what package-lock.json pins, but always from scratch. A stamp
in node_modules/ holds the lock's SHA-256 after a successful install, so the TypeScript
generation (scripts/gen_protos.py) and the client's tests reuse node_modules until the
lock changes. Exits 3 when npm is not installed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "clients" / "typescript"
LOCK = PACKAGE_DIR / "package-lock.json"
STAMP = PACKAGE_DIR / "node_modules" / ".batchd-lock.sha256"
NO_NPM = 3


def lock_digest() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()


def installed() -> bool:
    """True when node_modules holds what the lock pins (installed by this script)."""
    return STAMP.is_file() and STAMP.read_text().strip() == lock_digest()


def main() -> int:
    if installed():
        return 0
    npm = shutil.which("npm")
    if npm is None:
        print("npm_ci: npm not found (install Node.js 20 or later)", file=sys.stderr)
        return NO_NPM
    STAMP.unlink(missing_ok=True)
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    result = subprocess.run(cmd, cwd=PACKAGE_DIR, check=False)
    if result.returncode != 0:
        print(f"npm_ci: npm ci failed with exit code {result.returncode}", file=sys.stderr)
        return 1
    STAMP.write_text(lock_digest() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
