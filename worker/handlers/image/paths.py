"""Confinement of `image.resize`'s local paths: sources are read only from inside
`image_input_dir` and variants are written only inside `image_output_dir`.

A relative path from params is refused (PERMISSION_DENIED) when it is absolute, climbs
with `..`, or resolves — through a symlink anywhere along it — to a place outside its
directory. The roots are resolved once, by the handler's startup hook; the checks that
touch the disk run in the pool processes, with the rest of the item's file I/O.

With tenants, each directory is the default tenant's, and a named tenant's paths are
relative to `<directory>/tenants/<tenant>/`: its own, which no other tenant's paths can
name (the default tenant's may not start with `tenants/`).

There is a window between resolving a path and opening it in which a process that can
write inside the directories could swap a component for a symlink; the final component
is opened with O_NOFOLLOW, so only a directory swap in that window could escape. Keep
the directories writable only by the uploader and batchd.

A refusal, here or in ops.py, is an `ImageRefused`: the pool processes' permanent failure.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from batchd.core.domain import DEFAULT_TENANT
from batchd.worker.handler import Code

__all__ = [
    "TENANTS_DIR",
    "ImageRefused",
    "check_relative",
    "confined_output",
    "read_confined",
    "tenant_root",
]

# Under each directory, every named tenant's own: `tenants/<tenant>/` (tenant_root).
TENANTS_DIR = "tenants"


class ImageRefused(Exception):
    """The item cannot succeed, whatever the retries (a corrupt image, a path outside its
    directory): the handler fails it with `code` and `message`. The pool processes raise
    it, from here and from ops.py.

    `args` is `(message, code)`, so that the exception comes back from a pool process
    through pickle unchanged."""

    def __init__(self, message: str, code: int = Code.INVALID_ARGUMENT) -> None:
        super().__init__(message, code)
        self.message = message
        self.code = int(code)

    def __str__(self) -> str:
        return self.message


def tenant_root(root: Path, tenant: str) -> Path:
    """The directory a tenant's paths are relative to: `root` for the default tenant,
    `root/tenants/<tenant>` for another (tenant names are safe directory names)."""
    return root if tenant == DEFAULT_TENANT else root / TENANTS_DIR / tenant


def check_relative(
    path: str, what: str, directory: str, tenant: str | None = None
) -> PurePosixPath:
    """`path` as a relative path with no `..`, `.` or empty parts, else ImageRefused.
    `what` and `directory` name the param and the setting in the message. Given the
    item's `tenant`, a default tenant's path may not enter the tenants' directories."""
    pure = PurePosixPath(path)
    if (
        not path
        or pure.is_absolute()
        or "\\" in path
        or "\x00" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ImageRefused(
            f"{what} {path!r} must be a relative path inside {directory}, without '..'",
            Code.PERMISSION_DENIED,
        )
    if tenant == DEFAULT_TENANT and pure.parts[0] == TENANTS_DIR:
        raise ImageRefused(
            f"{what} {path!r}: {directory}/{TENANTS_DIR}/ holds the tenants' own files",
            Code.PERMISSION_DENIED,
        )
    return pure


def read_confined(root: Path, relative: str, max_bytes: int) -> bytes:
    """The bytes of the file at `relative` under `root` (a resolved directory)."""
    check_relative(relative, "source", "image_input_dir")
    real = Path(os.path.realpath(root / relative))
    if not real.is_relative_to(root):
        raise ImageRefused(
            f"source {relative!r} resolves outside image_input_dir (a symlink out)",
            Code.PERMISSION_DENIED,
        )
    try:
        descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise ImageRefused(f"source {relative!r} not found", Code.NOT_FOUND) from exc
    except PermissionError as exc:
        raise ImageRefused(f"source {relative!r} is not readable", Code.PERMISSION_DENIED) from exc
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", None) or isinstance(exc, IsADirectoryError):
            raise ImageRefused(f"source {relative!r} is not a regular file") from exc
        raise  # EIO and the like: the attempt may be retried
    with os.fdopen(descriptor, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > max_bytes:
            raise ImageRefused(
                f"source {relative!r} is {size:,} bytes, more than the limit of {max_bytes:,}"
            )
        return file.read(max_bytes + 1)


def confined_output(root: Path, relative: str) -> Path:
    """Where to write `relative` under `root` (a resolved directory): its directory is
    resolved (symlinks followed) and must stay inside `root`; it is created if missing."""
    check_relative(relative, "output", "image_output_dir")
    target = root / relative
    directory = Path(os.path.realpath(target.parent))
    if not directory.is_relative_to(root):
        raise ImageRefused(
            f"output {relative!r} resolves outside image_output_dir (a symlink out)",
            Code.PERMISSION_DENIED,
        )
    directory.mkdir(parents=True, exist_ok=True)
    return directory / target.name
