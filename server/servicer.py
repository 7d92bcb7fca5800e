"""The BatchService implementation: validate, convert, call the store."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import structlog

from batchd.core.callbacks import CallbackSecrets
from batchd.core.config import Settings
from batchd.core.domain import (
    BatchOptions,
    BatchRecord,
    BatchSpec,
    BatchState,
    HandlerStatus,
    ItemState,
)
from batchd.core.errors import FailedPrecondition, InvalidRequest
from batchd.core.events import BatchEventType, check_cursor
from batchd.core.export import ExportOrder, cursor_after
from batchd.core.logs import get_logger
from batchd.core.store import BatchStore, UploadSession
from batchd.core.watchers import WatcherCounts
from batchd.server import convert, principal, results, validation
from batchd.server.batch_events import EventFilter, EventHub
from batchd.server.decoding import Malformed
from batchd.server.errors import translate_errors
from batchd.server.metrics import ServerMetrics
from batchd.server.progress import ProgressHub
from batchd.server.tenancy import TenantView
from batchd.server.validation import SchemaCache, Violations
from batchd.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc

if TYPE_CHECKING:
    from batchd.core.otel import Tracing

log = get_logger(__name__)

# As the generated servicer base declares it: one context type for every method's
# request and response.
Context = grpc.aio.ServicerContext[Any, Any]

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
DEFAULT_MIN_INTERVAL = 0.25
MIN_MIN_INTERVAL = 0.01
DEFAULT_HEARTBEAT = 5.0
DEFAULT_EVENTS_HEARTBEAT = 15.0
MIN_EVENTS_HEARTBEAT = 1.0
_EXPORT_ORDERS = {
    batch_service_pb2.EXPORT_ORDER_UNSPECIFIED: ExportOrder.SUBMISSION,
    batch_service_pb2.EXPORT_ORDER_SUBMISSION: ExportOrder.SUBMISSION,
    batch_service_pb2.EXPORT_ORDER_CUSTOM_ID: ExportOrder.CUSTOM_ID,
}


class BatchServicer(batch_service_pb2_grpc.BatchServiceServicer):
    def __init__(
        self,
        store: BatchStore,
        hub: ProgressHub,
        settings: Settings,
        watchers: WatcherCounts | None = None,
        metrics: ServerMetrics | None = None,
        tracing: Tracing | None = None,
        events: EventHub | None = None,
    ) -> None:
        self.store = store
        self.events = events  # None: no batch events (events_retain 0)
        self.metrics = metrics
        self.tracing = tracing  # None: batches keep no trace context
        self.hub = hub
        self.watchers = watchers  # None: no limit of watchers per tenant
        self.schemas = SchemaCache()
        self.worker_ttl = settings.worker_ttl
        self.params_limits = validation.ParamsLimits(
            max_depth=settings.max_params_depth, max_bytes=settings.max_params_bytes
        )
        self.max_upload_message_items = settings.max_upload_message_items
        self.upload_idle_timeout = settings.upload_idle_timeout
        self.max_upload_duration = settings.max_upload_duration
        # Floors of what a watcher may ask, so that thousands of watchers asking for
        # fast updates cannot take the server's CPU.
        self.watch_min_interval = settings.watch_min_interval
        self.watch_min_heartbeat = settings.watch_min_heartbeat
        self.callback_allow_http = settings.callback_allow_http
        self.callback_secrets = CallbackSecrets.from_settings(settings)
        self.service_defaults = BatchOptions(
            chunk_size=settings.default_chunk_size,
            completion_window=settings.default_completion_window,
        )

    # -- submitting -------------------------------------------------------------------
    @translate_errors
    async def SubmitBatch(
        self, request: batch_service_pb2.SubmitBatchRequest, context: Context
    ) -> batch_service_pb2.SubmitBatchResponse:
        violations = Violations()
        if not request.items:
            violations.add("items", "at least one item is required")
        elif len(request.items) > validation.MAX_ITEMS_PER_MESSAGE:
            violations.add("items", f"at most {validation.MAX_ITEMS_PER_MESSAGE} per message")
        view = _view()
        upload = await self._begin(view, violations, request, request.items)
        batch, replayed = await _finish(upload.session)
        if self.metrics is not None and not replayed:
            self.metrics.submitted(batch.handler, batch.total_items, upload.session.byte_count)
        return batch_service_pb2.SubmitBatchResponse(
            batch=convert.batch_to_proto(view.show(batch)), replayed=replayed
        )

    @translate_errors
    async def UploadBatch(
        self,
        request_iterator: AsyncIterator[batch_service_pb2.UploadBatchRequest],
        context: Context,
    ) -> batch_service_pb2.UploadBatchResponse:
        started = asyncio.get_running_loop().time()
        messages = _paced(
            request_iterator, self.upload_idle_timeout, started + self.max_upload_duration
        )
        try:
            first = await anext(messages, None)
        except _TooSlow as exc:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        if isinstance(first, Malformed):
            raise first.error()
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidRequest.for_field("header", "the first message must be the header")
        view = _view()
        upload = await self._begin(view, Violations(), first.header, ())
        try:
            await _receive_items(upload, messages, self.max_upload_message_items)
        except _TooSlow as exc:
            await upload.session.abort()  # dropped before the caller hears of it
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except BaseException:
            # A broken stream, a bad item or a cancelled call: nothing may stay behind.
            await upload.session.abort()
            raise
        batch, replayed = await _finish(upload.session)
        if self.metrics is not None and not replayed:
            self.metrics.submitted(batch.handler, batch.total_items, upload.session.byte_count)
        return batch_service_pb2.UploadBatchResponse(
            batch=convert.batch_to_proto(view.show(batch)), replayed=replayed
        )

    async def _begin(
        self,
        view: TenantView,
        violations: Violations,
        header: batch_service_pb2.SubmitBatchRequest | batch_service_pb2.UploadBatchHeader,
        items: Iterable[batch_pb2.Item],
    ) -> _Upload:
        spec = await self.store.get_handler(header.handler) if header.handler else None
        validation.check_header(
            violations,
            handler=header.handler,
            spec=spec,
            metadata=header.metadata,
            request_id=header.request_id,
            batch_id=header.batch_id,
            options=header.options,
            callback_allow_http=self.callback_allow_http,
        )
        start_at = validation.check_start_time(violations, header, now=self.store.clock())
        early = 0
        if isinstance(header, batch_service_pb2.UploadBatchHeader) and header.start_early:
            early = validation.check_early_start(violations, header)
        if spec is not None:
            validation.check_block_size(violations, header.options, spec, self.service_defaults)
        violations.raise_if_any()
        assert spec is not None  # check_header reported a missing handler
        if header.options.completion_callback.url:
            self._check_callback_secret(view.tenant)
        batch_id = view.batch_id(header.batch_id or uuid.uuid4().hex)
        structlog.contextvars.bind_contextvars(batch_id=batch_id)
        options = validation.effective_options(header.options, spec, self.service_defaults)
        batch_spec = BatchSpec(
            batch_id=batch_id,
            handler=header.handler,
            options=view.options(options),
            metadata=dict(header.metadata),
            request_id=view.request_id(header.request_id),
            tenant=view.tenant,
            trace_parent=self.tracing.batch_call(batch_id) if self.tracing else "",
            start_at=start_at,
        )
        validator = self.schemas.validator(spec)
        new_items = validation.check_items(
            violations, items, first_index=0, validator=validator, limits=self.params_limits
        )
        violations.raise_if_any()
        session = await self.store.begin_upload(batch_spec, early=early)
        upload = _Upload(session, validator, self.params_limits)
        if new_items:
            try:
                await upload.session.add_items(new_items)
            except BaseException:
                await upload.session.abort()
                raise
        return upload

    def _check_callback_secret(self, tenant: str) -> None:
        """FAILED_PRECONDITION unless the tenant's callbacks can be signed."""
        if self.callback_secrets.for_tenant(tenant) is None:
            setting = self.callback_secrets.setting_for(tenant)
            raise FailedPrecondition(
                f"completion callbacks need a signing secret for tenant {tenant!r}, which "
                f"the service has not been given ({setting})"
            )

    # -- reading ----------------------------------------------------------------------
    @translate_errors
    async def GetBatch(
        self, request: batch_service_pb2.GetBatchRequest, context: Context
    ) -> batch_service_pb2.GetBatchResponse:
        view = _view()
        batch = await self.store.get_batch(view.batch_id(request.batch_id))
        [batch] = await self.store.explain_waits([batch], self.worker_ttl)
        return batch_service_pb2.GetBatchResponse(batch=convert.batch_to_proto(view.show(batch)))

    @translate_errors
    async def ListBatches(
        self, request: batch_service_pb2.ListBatchesRequest, context: Context
    ) -> batch_service_pb2.ListBatchesResponse:
        view = _view()
        states = validation.known_states(request.states, BatchState, "states")
        batches, token = await self.store.list_batches(
            _page_size(request.page_size), request.page_token, states, view.list_scope()
        )
        batches = await self.store.explain_waits(batches, self.worker_ttl)
        return batch_service_pb2.ListBatchesResponse(
            batches=[convert.batch_to_proto(view.show(b)) for b in batches],
            next_page_token=token,
        )

    @translate_errors
    async def ListBatchItems(
        self, request: batch_service_pb2.ListBatchItemsRequest, context: Context
    ) -> batch_service_pb2.ListBatchItemsResponse:
        states = validation.known_states(request.states, ItemState, "states")
        items, token = await self.store.list_items(
            _view().batch_id(request.batch_id),
            _page_size(request.page_size),
            request.page_token,
            states,
        )
        return batch_service_pb2.ListBatchItemsResponse(
            items=[convert.item_to_proto(i) for i in items], next_page_token=token
        )

    @translate_errors
    async def ListHandlers(
        self, request: batch_service_pb2.ListHandlersRequest, context: Context
    ) -> batch_service_pb2.ListHandlersResponse:
        handlers = await self.store.list_handlers(self.worker_ttl)
        return batch_service_pb2.ListHandlersResponse(
            handlers=[convert.handler_to_proto(h) for h in sorted(handlers, key=_name)]
        )

    # -- changing ---------------------------------------------------------------------
    @translate_errors
    async def CancelBatch(
        self, request: batch_service_pb2.CancelBatchRequest, context: Context
    ) -> batch_service_pb2.CancelBatchResponse:
        view = _view()
        batch = await self.store.cancel_batch(view.batch_id(request.batch_id))
        log.info("batch_cancel_requested", batch_id=batch.batch_id, state=batch.state.name)
        return batch_service_pb2.CancelBatchResponse(batch=convert.batch_to_proto(view.show(batch)))

    @translate_errors
    async def PauseBatch(
        self, request: batch_service_pb2.PauseBatchRequest, context: Context
    ) -> batch_service_pb2.PauseBatchResponse:
        view = _view()
        batch = await self.store.pause_batch(view.batch_id(request.batch_id))
        log.info("batch_paused", batch_id=batch.batch_id, state=batch.state.name)
        return batch_service_pb2.PauseBatchResponse(batch=convert.batch_to_proto(view.show(batch)))

    @translate_errors
    async def ResumeBatch(
        self, request: batch_service_pb2.ResumeBatchRequest, context: Context
    ) -> batch_service_pb2.ResumeBatchResponse:
        view = _view()
        batch = await self.store.resume_batch(view.batch_id(request.batch_id))
        log.info("batch_resumed", batch_id=batch.batch_id, state=batch.state.name)
        return batch_service_pb2.ResumeBatchResponse(batch=convert.batch_to_proto(view.show(batch)))

    @translate_errors
    async def UpdateBatch(
        self, request: batch_service_pb2.UpdateBatchRequest, context: Context
    ) -> batch_service_pb2.UpdateBatchResponse:
        view = _view()
        batch_id = view.batch_id(request.batch_id)
        violations = Violations()
        changes = validation.check_update(violations, request.options, request.update_mask.paths)
        violations.raise_if_any()
        batch = await self.store.update_options(batch_id, changes)
        log.info("batch_updated", batch_id=batch_id, **changes)
        return batch_service_pb2.UpdateBatchResponse(batch=convert.batch_to_proto(view.show(batch)))

    @translate_errors
    async def RetryBatchItems(
        self, request: batch_service_pb2.RetryBatchItemsRequest, context: Context
    ) -> batch_service_pb2.RetryBatchItemsResponse:
        view = _view()
        batch_id = view.batch_id(request.batch_id)
        violations = Violations()
        validation.check_retry(violations, request.custom_ids, request.request_id)
        violations.raise_if_any()
        batch, requeued, replayed = await self.store.retry_items(
            batch_id, list(request.custom_ids), view.request_id(request.request_id)
        )
        log.info("batch_items_requeued", batch_id=batch_id, items=requeued, replayed=replayed)
        return batch_service_pb2.RetryBatchItemsResponse(
            batch=convert.batch_to_proto(view.show(batch)), requeued=requeued, replayed=replayed
        )

    @translate_errors
    async def DeleteBatch(
        self, request: batch_service_pb2.DeleteBatchRequest, context: Context
    ) -> batch_service_pb2.DeleteBatchResponse:
        batch_id = _view().batch_id(request.batch_id)
        await self.store.delete_batch(batch_id)
        log.info("batch_deleted", batch_id=batch_id)
        return batch_service_pb2.DeleteBatchResponse()

    # -- watching ---------------------------------------------------------------------
    async def WatchProgress(
        self, request: batch_service_pb2.WatchProgressRequest, context: Context
    ) -> AsyncIterator[batch_service_pb2.WatchProgressResponse]:
        """The typed face of `watch_progress_serialized`, which the server registers."""
        async for data in self.watch_progress_serialized(request, context):
            yield batch_service_pb2.WatchProgressResponse.FromString(data)

    @translate_errors
    async def watch_progress_serialized(
        self, request: batch_service_pb2.WatchProgressRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """WatchProgress, each response serialized once per snapshot (and caller's view
        of the batch id) and the same bytes handed to every watcher of the batch."""
        view = _view()
        batch_id = view.batch_id(request.batch_id)
        structlog.contextvars.bind_contextvars(batch_id=batch_id)
        min_interval = DEFAULT_MIN_INTERVAL
        if request.HasField("min_interval"):
            min_interval = convert.seconds(request.min_interval)
        min_interval = max(min_interval, self.watch_min_interval, MIN_MIN_INTERVAL)
        heartbeat = DEFAULT_HEARTBEAT
        if request.HasField("heartbeat_interval"):
            heartbeat = convert.seconds(request.heartbeat_interval)
        heartbeat = max(heartbeat, min_interval, self.watch_min_heartbeat)
        shown_id = view.shown_id(batch_id)
        async with self._watch_slot(view):
            # NOT_FOUND comes from the batch's feed before the first message.
            async for snapshot, is_heartbeat in self.hub.watch(
                batch_id, min_interval=min_interval, heartbeat_interval=heartbeat
            ):
                key = (shown_id, is_heartbeat)
                data = snapshot.encoded.get(key)
                if data is None:
                    data = snapshot.encoded[key] = batch_service_pb2.WatchProgressResponse(
                        progress=convert.progress_to_proto(snapshot, shown_id),
                        heartbeat=is_heartbeat,
                    ).SerializeToString()
                yield data

    @translate_errors
    async def WatchBatches(
        self, request: batch_service_pb2.WatchBatchesRequest, context: Context
    ) -> AsyncIterator[batch_service_pb2.WatchBatchesResponse]:
        if self.events is None:
            raise FailedPrecondition("batch events are off on this service (events_retain 0)")
        view = _view()
        keep, heartbeat = self._event_filter(request)
        position = await self.events.start_position(
            view.tenant, request.cursor, request.from_oldest
        )
        async with self._watch_slot(view):
            async for delivery in self.events.watch(
                view.tenant, position, keep=keep, heartbeat_interval=heartbeat
            ):
                if not delivery.events:
                    yield batch_service_pb2.WatchBatchesResponse(
                        heartbeat=True, cursor=delivery.cursor
                    )
                for event in delivery.events:
                    yield batch_service_pb2.WatchBatchesResponse(
                        event=convert.event_to_proto(event, view.shown_id(event.batch_id)),
                        cursor=event.cursor,
                    )

    def _event_filter(
        self, request: batch_service_pb2.WatchBatchesRequest
    ) -> tuple[EventFilter, float]:
        """A WatchBatches request's filter and heartbeat interval; INVALID_ARGUMENT with a
        violation per bad field."""
        violations = Violations()
        states = validation.known_values(violations, request.states, BatchState, "states")
        types = validation.known_values(violations, request.types, BatchEventType, "types")
        validation.check_labels(violations, request.labels)
        if len(request.handler) > validation.MAX_HANDLER_NAME:
            violations.add("handler", f"at most {validation.MAX_HANDLER_NAME} characters")
        if request.cursor:
            if request.from_oldest:
                violations.add("from_oldest", "not with a cursor: the cursor says where to start")
            try:
                check_cursor(request.cursor)
            except InvalidRequest as exc:
                violations.items.extend(exc.violations)
        heartbeat = DEFAULT_EVENTS_HEARTBEAT
        if request.HasField("heartbeat_interval"):
            heartbeat = convert.seconds(request.heartbeat_interval)
            if heartbeat < 0:
                violations.add("heartbeat_interval", "must not be negative")
        violations.raise_if_any()
        keep = EventFilter(
            states=frozenset(states),
            types=frozenset(types),
            labels=dict(request.labels),
            handler=request.handler,
        )
        return keep, max(heartbeat, MIN_EVENTS_HEARTBEAT, self.watch_min_heartbeat)

    # -- exporting --------------------------------------------------------------------
    @translate_errors
    async def ExportBatchResults(
        self, request: batch_service_pb2.ExportBatchResultsRequest, context: Context
    ) -> AsyncIterator[batch_service_pb2.ExportBatchResultsResponse]:
        batch_id = _view().batch_id(request.batch_id)
        structlog.contextvars.bind_contextvars(batch_id=batch_id)
        order = _EXPORT_ORDERS.get(request.order)
        if order is None:
            raise InvalidRequest.for_field("order", f"unknown order {request.order}")
        # Each yield waits for the message to be written: a slow reader holds the export
        # (and what it has read ahead, one page) rather than the server's memory.
        async for page in self.store.export_results(batch_id, order, request.after):
            sent = 0
            for lines, count in results.render_lines(page.rows):
                sent += count
                yield batch_service_pb2.ExportBatchResultsResponse(
                    lines=lines,
                    line_count=count,
                    cursor=cursor_after(order, page.rows[sent - 1]),
                    position=page.position - (len(page.rows) - sent),
                    total_items=page.total,
                )

    def _watch_slot(self, view: TenantView) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the caller's tenant's open watches (Settings.tenant_max_watchers), for
        as long as the stream lasts. An admin takes none: it answers for the service,
        whatever its tenant, and with --auth none every caller is one, the one tenant
        being the whole service; the server-wide cap on calls holds for it."""
        if self.watchers is None or view.sees_every_tenant:
            return contextlib.nullcontext()
        return self.watchers.held(view.tenant)


@dataclass(frozen=True)
class _Upload:
    """A batch being stored, with the validator for its handler's params."""

    session: UploadSession
    validator: validation.Validator
    limits: validation.ParamsLimits

    async def add(self, items: Sequence[batch_pb2.Item]) -> None:
        # An early upload's first chunk is checked and appended on its own: it runs while
        # the rest of its message is checked.
        head = self.session.items_apart
        if 0 < head < len(items):
            await self._add(items[:head])
            items = items[head:]
        await self._add(items)

    async def _add(self, items: Iterable[batch_pb2.Item]) -> None:
        violations = Violations()
        new_items = validation.check_items(
            violations,
            items,
            first_index=self.session.item_count,
            validator=self.validator,
            limits=self.limits,
        )
        violations.raise_if_any()
        await self.session.add_items(new_items)


class _TooSlow(Exception):
    """An upload stream idle too long, or open too long."""


async def _paced(messages: AsyncIterator[T], idle: float, deadline: float) -> AsyncIterator[T]:
    """The stream's messages; _TooSlow once one takes longer than `idle` seconds to come,
    or the loop's clock passes `deadline`."""
    loop = asyncio.get_running_loop()
    iterator = aiter(messages)
    while True:
        remaining = deadline - loop.time()
        wait = min(idle, remaining)
        try:
            async with asyncio.timeout(max(wait, 0)):
                message = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if wait < idle:
                raise _TooSlow("the upload took longer than max_upload_duration") from None
            raise _TooSlow(
                f"the upload stream sent nothing for {idle:g} s (upload_idle_timeout)"
            ) from None
        yield message


async def _receive_items(
    upload: _Upload,
    request_iterator: AsyncIterator[batch_service_pb2.UploadBatchRequest],
    max_message_items: int,
) -> None:
    """Stages item messages until the end message. A stream that stops without one was
    broken off — a cancelled call can look like a clean end — so it commits nothing."""
    async for message in request_iterator:
        received: object = message  # what protobuf could not decode comes as a Malformed
        if isinstance(received, Malformed):
            raise received.error(first_index=upload.session.item_count)
        part = message.WhichOneof("part")
        if part == "items":
            if len(message.items.items) > max_message_items:
                raise InvalidRequest.for_field(
                    "items.items", f"at most {max_message_items} items per message"
                )
            await upload.add(message.items.items)
        elif part == "end":
            if message.end.item_count != upload.session.item_count:
                raise InvalidRequest.for_field(
                    "end.item_count",
                    f"the stream carried {upload.session.item_count} items, "
                    f"not {message.end.item_count}",
                )
            if await anext(aiter(request_iterator), None) is not None:
                raise InvalidRequest.for_field("end", "must be the last message")
            return
        else:
            raise InvalidRequest.for_field("header", "only the first message is a header")
    raise InvalidRequest.for_field("end", "the stream ended without an end message")


async def _finish(session: UploadSession) -> tuple[BatchRecord, bool]:
    try:
        batch, replayed = await session.commit()
    except BaseException:
        await session.abort()
        raise
    log.info(
        "batch_submitted",
        batch_id=batch.batch_id,
        handler=batch.handler,
        items=batch.total_items,
        chunks=batch.chunk_count,
        replayed=replayed,
    )
    return batch, replayed


def _view() -> TenantView:
    """The calling principal's view of batches (batchd.server.tenancy)."""
    return TenantView(principal.current())


def _page_size(requested: int) -> int:
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _name(status: HandlerStatus) -> str:
    return status.spec.name
