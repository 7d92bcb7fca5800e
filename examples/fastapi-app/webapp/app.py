"""A web app in front of batchd: uploads, status, live progress and results over HTTP.

    POST /batches?handler=NAME        a CSV (text/csv) or JSON Lines (application/x-ndjson)
                                      body, streamed into a batch; 201 and the batch
    GET  /batches/{id}                the batch, as JSON
    GET  /batches/{id}/events         its progress as server-sent events, one `data:` JSON
                                      per snapshot, until the terminal one
    GET  /batches/{id}/results        a finished batch's results, JSON Lines

The app keeps one `AsyncClient` (one gRPC channel) for its lifetime; every request shares
it. Errors: webapp.errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from batchd.client import AsyncClient, Batch, BatchdError, BatchProgress, ItemCounts
from webapp.errors import bad_row_response, batchd_error_response
from webapp.rows import BadRow, Format, Rows

__all__ = ["create_app"]

# The media types an upload may have, by format.
FORMATS: dict[str, Format] = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/json-lines": "jsonl",
}


def create_app(target: str | None = None, token: str | None = None) -> FastAPI:
    """The app, calling the batchd server at `target` (default: $BATCHD_TARGET, else
    localhost:50051) with `token` (default: $BATCHD_TOKEN, else none).

    For uvicorn: `uvicorn --factory webapp:create_app`."""
    target = target or os.environ.get("BATCHD_TARGET") or "localhost:50051"
    token = token or os.environ.get("BATCHD_TOKEN") or None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Uploads and watches are streams without a deadline; unary calls keep the default.
        async with AsyncClient(target, token=token) as client:
            app.state.batchd = client
            yield

    app = FastAPI(title="batchd web example", lifespan=lifespan)
    app.add_api_route("/batches", upload, methods=["POST"], status_code=201)
    app.add_api_route("/batches/{batch_id}", status, methods=["GET"])
    app.add_api_route("/batches/{batch_id}/events", events, methods=["GET"])
    app.add_api_route("/batches/{batch_id}/results", results, methods=["GET"])
    return app


def _client(request: Request) -> AsyncClient:
    return cast(AsyncClient, request.app.state.batchd)


async def upload(request: Request, handler: Annotated[str, Query(min_length=1)]) -> Response:
    """Streams the body, row by row, into a new batch of `handler`. An `Idempotency-Key`
    header is the batch's request_id: a repeat answers with the batch the first made."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in FORMATS:
        accepted = ", ".join(FORMATS)
        return JSONResponse({"detail": f"send one of: {accepted}"}, status_code=415)
    rows = Rows(request.stream(), FORMATS[media_type])
    try:
        result = await _client(request).upload(
            handler, rows, request_id=request.headers.get("idempotency-key")
        )
    except BadRow as exc:
        return bad_row_response(exc)
    except ClientDisconnect:  # the upload abandoned: batchd kept nothing, nobody listens
        return Response(status_code=400)
    except BatchdError as exc:
        return batchd_error_response(exc, rows.line_of)
    location = request.url_for("status", batch_id=result.batch.batch_id)
    return JSONResponse(
        batch_json(result.batch),
        status_code=200 if result.replayed else 201,
        headers={"Location": str(location)},
    )


async def status(request: Request, batch_id: str) -> Response:
    """The batch, as JSON."""
    try:
        batch = await _client(request).get(batch_id)
    except BatchdError as exc:
        return batchd_error_response(exc)
    return JSONResponse(batch_json(batch))


async def events(request: Request, batch_id: str) -> Response:
    """Server-sent events: one `data: {...}` per progress snapshot, as `progress_json`
    gives them, the terminal one last. A browser's EventSource reconnects when a stream
    ends; the page should close it on a snapshot whose `terminal` is true."""
    snapshots = _client(request).watch(batch_id)
    try:  # the first snapshot, or the error (NOT_FOUND) as a status of its own
        first = await anext(snapshots)
    except BatchdError as exc:
        return batchd_error_response(exc)

    async def stream() -> AsyncIterator[str]:
        try:
            yield _event(first)
            async for progress in snapshots:
                yield _event(progress)
        finally:  # the browser gone: the watch's gRPC stream ends now, not when collected
            await _close(snapshots)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def _close(iterator: AsyncIterator[Any]) -> None:
    """Ends an async generator of the client's (declared as an AsyncIterator) at once."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def _event(progress: BatchProgress) -> str:
    return f"data: {json.dumps(progress_json(progress))}\n\n"


async def results(request: Request, batch_id: str) -> Response:
    """A finished batch's results as one JSON Lines download, one line per item in
    submission order (docs/client.md, "Results as one file"); 409 while unfinished."""
    pages = _client(request).export_results(batch_id)
    try:
        first = await anext(pages)
    except StopAsyncIteration:
        first = None
    except BatchdError as exc:
        return batchd_error_response(exc)

    async def stream() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield first.lines
                async for page in pages:
                    yield page.lines
        finally:
            await _close(pages)

    # A stream that breaks off ends the response without its last chunk: the browser
    # or HTTP client reports an incomplete download rather than a short file.
    disposition = f'attachment; filename="{batch_id}.jsonl"'
    return StreamingResponse(
        stream(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": disposition},
    )


def batch_json(batch: Batch) -> dict[str, Any]:
    """What GET /batches/{id} answers."""
    return {
        "batch_id": batch.batch_id,
        "handler": batch.handler,
        "state": batch.state.name,
        "terminal": batch.state.is_terminal,
        "total_items": batch.total_items,
        "counts": _counts(batch.counts),
        "metadata": dict(batch.metadata),
        "waiting_reason": batch.waiting_reason,
        "create_time": _time(batch.create_time),
        "start_time": _time(batch.start_time),
        "end_time": _time(batch.end_time),
    }


def progress_json(progress: BatchProgress) -> dict[str, Any]:
    """One server-sent event's data."""
    return {
        "batch_id": progress.batch_id,
        "state": progress.state.name,
        "terminal": progress.state.is_terminal,
        "total_items": progress.total_items,
        "counts": _counts(progress.counts),
        "fraction": progress.fraction,
        "items_per_second": progress.items_per_second,
        "eta_seconds": progress.eta.total_seconds() if progress.eta is not None else None,
        "heartbeat": progress.heartbeat,
        "waiting_reason": progress.waiting_reason,
    }


def _counts(counts: ItemCounts) -> dict[str, int]:
    return {
        "pending": counts.pending,
        "claimed": counts.claimed,
        "running": counts.running,
        "succeeded": counts.succeeded,
        "failed": counts.failed,
        "cancelled": counts.cancelled,
        "expired": counts.expired,
    }


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
