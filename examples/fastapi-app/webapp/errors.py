"""batchd's errors as HTTP answers, in one place.

    INVALID_ARGUMENT     422  {"detail", "violations": [{"field", "line", "description"}]}
    NOT_FOUND            404  {"detail"}
    FAILED_PRECONDITION  409  {"detail"}   (e.g. the results of an unfinished batch)
    ALREADY_EXISTS       409  {"detail"}
    RESOURCE_EXHAUSTED   429  {"detail", "violations": [{"field", "description"}]},
                              Retry-After: seconds
    UNAVAILABLE          503  {"detail"}, Retry-After: 1
    anything else        502  {"detail": "batchd failed"}: the app's own credentials or
                              configuration, nothing the caller can fix; logged here

A line of the upload that is no item (`BadRow`) is a 422 like batchd's own.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any

import grpc
from fastapi.responses import JSONResponse

from batchd.client import BatchdError
from webapp.rows import BadRow

__all__ = ["bad_row_response", "batchd_error_response"]

_log = logging.getLogger("webapp")

_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}

_ITEM = re.compile(r"^items\[(\d+)\]")


def batchd_error_response(
    error: BatchdError, line_of: Callable[[int], int] | None = None
) -> JSONResponse:
    """The answer to a request that batchd refused with `error`. With `line_of`, an
    upload's violations naming `items[<i>]` also give the line of the body it came from."""
    status = _STATUS.get(error.code)
    if status is None:
        _log.error("batchd call failed: %s", error)
        return JSONResponse({"detail": "batchd failed"}, status_code=502)
    body: dict[str, Any] = {"detail": error.message}
    headers: dict[str, str] = {}
    if status == 422:
        body["violations"] = [
            {"field": v.field, "line": _line(v.field, line_of), "description": v.description}
            for v in error.field_violations
        ]
    elif status == 429:
        body["violations"] = [
            {"field": v.subject, "description": v.description} for v in error.quota_violations
        ]
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after or 1)))
    elif status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse(body, status_code=status, headers=headers)


def _line(field: str, line_of: Callable[[int], int] | None) -> int | None:
    match = _ITEM.match(field)
    return line_of(int(match[1])) if match and line_of else None


def bad_row_response(error: BadRow) -> JSONResponse:
    """The 422 for a line of an upload that is no item."""
    violation = {"field": error.field, "line": error.line, "description": error.description}
    return JSONResponse({"detail": str(error), "violations": [violation]}, status_code=422)
