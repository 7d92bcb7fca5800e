#!/usr/bin/env python3
"""Install a package's npm packages from its lock file, once per lock.

    .venv/bin/python scripts/npm_ci.py        # clients/typescript: npm ci, unless
                                              # node_modules matches the lock
    .venv/bin/python scripts/npm_ci.py DIR    # the package in DIR (examples/express-app)

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
NO_NPM = 3


def lock_digest(package_dir: Path = PACKAGE_DIR) -> str:
    return hashlib.sha256((package_dir / "package-lock.json").read_bytes()).hexdigest()


def stamp(package_dir: Path = PACKAGE_DIR) -> Path:
    return package_dir / "node_modules" / ".batchd-lock.sha256"


def installed(package_dir: Path = PACKAGE_DIR) -> bool:
    """True when node_modules holds what the lock pins (installed by this script)."""
    done = stamp(package_dir)
    return done.is_file() and done.read_text().strip() == lock_digest(package_dir)


def main(argv: list[str]) -> int:
    package_dir = Path(argv[0]).resolve() if argv else PACKAGE_DIR
    if installed(package_dir):
        return 0
    npm = shutil.which("npm")
    if npm is None:
        print("npm_ci: npm not found (install Node.js 20 or later)", file=sys.stderr)
        return NO_NPM
    stamp(package_dir).unlink(missing_ok=True)
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    # npm's summary ("added 12 packages") would land in the output of the scripts that
    # call this one; it is shown only when the install fails.
    result = subprocess.run(cmd, cwd=package_dir, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        print(f"npm_ci: npm ci failed with exit code {result.returncode}", file=sys.stderr)
        return 1
    stamp(package_dir).write_text(lock_digest(package_dir) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
