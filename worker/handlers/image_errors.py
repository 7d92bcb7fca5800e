"""`ImageRefused`: how `image.resize`'s pool processes report a permanent failure."""

from __future__ import annotations

from batchd.worker.handler import Code

__all__ = ["ImageRefused"]


class ImageRefused(Exception):
    """The item cannot succeed, whatever the retries (a corrupt image, a path outside its
    directory): the handler fails it with `code` and `message`.

    `args` is `(message, code)`, so that the exception comes back from a pool process
    through pickle unchanged."""

    def __init__(self, message: str, code: int = Code.INVALID_ARGUMENT) -> None:
        super().__init__(message, code)
        self.message = message
        self.code = int(code)

    def __str__(self) -> str:
        return self.message
