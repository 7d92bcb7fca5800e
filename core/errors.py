"""The one error tree of batchd.

    BatchdError
    ├── InvalidRequest      (INVALID_ARGUMENT, with field violations)
    ├── NotFound            (NOT_FOUND)
    ├── AlreadyExists       (ALREADY_EXISTS)
    ├── FailedPrecondition  (FAILED_PRECONDITION)
    ├── Exhausted           (RESOURCE_EXHAUSTED, with a retry delay)
    └── Unavailable         (UNAVAILABLE: Redis or another dependency is down)

The gRPC edge maps these to status codes in one place; anything else is INTERNAL.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str  # a path such as "items[12].custom_id"
    description: str


class BatchdError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(BatchdError):
    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidRequest:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class NotFound(BatchdError):
    pass


class AlreadyExists(BatchdError):
    pass


class FailedPrecondition(BatchdError):
    pass


class Exhausted(BatchdError):
    """A limit is reached. `quota_subject` / `quota_description` name it (for a
    google.rpc.QuotaFailure), when it is a quota."""

    def __init__(
        self,
        message: str,
        retry_after: float,
        *,
        quota_subject: str = "",
        quota_description: str = "",
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.quota_subject = quota_subject
        self.quota_description = quota_description


class Unavailable(BatchdError):
    pass
