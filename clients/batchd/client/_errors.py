"""The client's one exception.

    BatchdError                 any failed RPC, and items the client cannot send
      .code                     grpc.StatusCode (NOT_FOUND, INVALID_ARGUMENT, ...)
      .message                  the status message
      .field_violations         [FieldViolation(field, description)] from google.rpc.BadRequest
      .retry_after              seconds, from google.rpc.RetryInfo; None without one
      .quota_violations         [QuotaViolation(subject, description)] from
                                google.rpc.QuotaFailure: which limit was reached

The service sends rich errors (AIP-193): a `google.rpc.Status` in the
`grpc-status-details-bin` trailer. Items the client cannot encode raise the same
error with INVALID_ARGUMENT before anything is sent, so callers handle one type.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = ["BatchdError", "FieldViolation", "QuotaViolation", "rpc_errors"]

_log = logging.getLogger("batchd.client")


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, e.g. `items[12].custom_id`."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """A limit a request ran into (RESOURCE_EXHAUSTED), e.g. `max_pending_items`."""

    subject: str
    description: str


class BatchdError(Exception):
    """A failed batchd call: a gRPC status code, a message and the rich details."""

    code: grpc.StatusCode
    message: str
    field_violations: list[FieldViolation]
    retry_after: float | None
    quota_violations: list[QuotaViolation]

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
        quota_violations: Sequence[QuotaViolation] = (),
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.field_violations = list(field_violations)
        self.retry_after = retry_after
        self.quota_violations = list(quota_violations)

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        for violation in self.field_violations:
            text += f"\n  {violation.field}: {violation.description}"
        return text

    def __repr__(self) -> str:
        return (
            f"BatchdError(code={self.code!r}, message={self.message!r}, "
            f"field_violations={self.field_violations!r}, retry_after={self.retry_after!r})"
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> BatchdError:
        """Builds the error from a failed call (sync `grpc.RpcError` or `AioRpcError`)."""
        code = _call_attr(error, "code") or grpc.StatusCode.UNKNOWN
        message = _call_attr(error, "details") or ""
        status = _rich_status(error)
        if status is None:
            return cls(code, message)
        violations: list[FieldViolation] = []
        retry_after: float | None = None
        quotas: list[QuotaViolation] = []
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            retry_info = error_details_pb2.RetryInfo()
            quota = error_details_pb2.QuotaFailure()
            # Unpack() is False for a detail of another type.
            if detail.Unpack(bad_request):
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
            elif detail.Unpack(retry_info):
                retry_after = retry_info.retry_delay.ToTimedelta().total_seconds()
            elif detail.Unpack(quota):
                quotas.extend(QuotaViolation(v.subject, v.description) for v in quota.violations)
        return cls(code, status.message or message, violations, retry_after, quotas)

    @classmethod
    def invalid_argument(cls, field: str, description: str) -> BatchdError:
        """An INVALID_ARGUMENT raised by the client itself, naming one field."""
        return cls(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"invalid {field}",
            [FieldViolation(field, description)],
        )


def _call_attr(error: grpc.RpcError, name: str) -> Any:
    # A bare grpc.RpcError (raised by interceptors, say) has no call methods.
    method = getattr(error, name, None)
    return method() if callable(method) else None


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    if not callable(getattr(error, "trailing_metadata", None)):
        return None
    try:
        # AioRpcError is no grpc.Call, but has the three methods from_call uses.
        status = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError as exc:
        # The trailer disagrees with the status line: trust the status line.
        _log.debug("ignoring inconsistent rich status: %s", exc)
        return None
    return cast(status_pb2.Status | None, status)


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Turns any `grpc.RpcError` raised inside into a `BatchdError`."""
    try:
        yield
    except grpc.RpcError as exc:
        raise BatchdError.from_rpc_error(exc) from exc
