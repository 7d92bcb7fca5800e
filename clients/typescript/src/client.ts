/**
 * `BatchdClient`: the batchd API over a gRPC (HTTP/2) transport of connect-node, with the
 * semantics of the Python client (batchd.client.AsyncClient).
 */

import { create, isMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  type CallOptions,
  type Client,
  Code,
  ConnectError,
  createClient,
  type Interceptor,
  type Transport,
  type UnaryRequest,
} from "@connectrpc/connect";
import { createGrpcTransport, type GrpcTransportOptions } from "@connectrpc/connect-node";

import {
  type Batch,
  type BatchItem,
  type BatchOptionsSchema,
  BatchState,
  type HandlerInfo,
  ItemState,
} from "./gen/batchd/v1/batch_pb.js";
import {
  type BatchEvent,
  BatchService,
  type ExportBatchResultsResponse,
  ExportOrder,
  SubmitBatchRequestSchema,
  UploadBatchHeaderSchema,
  type UploadBatchRequest,
  WatchProgressRequestSchema,
} from "./gen/batchd/v1/batch_service_pb.js";
import { BatchdError, lostConnection, rpc } from "./errors.js";
import { EventsSession, type WatchBatchesOptions } from "./events.js";
import {
  ABANDON,
  checkedSize,
  DEFAULT_ITEMS_PER_MESSAGE,
  DEFAULT_MAX_MESSAGE_BYTES,
  FIRST_EARLY_MESSAGE_ITEMS,
  type ItemLike,
  MAX_REQUEST_BYTES,
  toItem,
  UploadPacker,
  uploadRequests,
} from "./items.js";
import {
  DEFAULT_WATCH_RETRY,
  type WatchReconnect,
  type WatchRetry,
  WatchSession,
  type WatchSnapshot,
} from "./watch.js";

export { BatchState, ExportOrder, ItemState };

/** Batch options: the fields of batchd.v1.BatchOptions, e.g. `{ chunkSize: 500 }`. */
export type BatchOptions = MessageInitShape<typeof BatchOptionsSchema>;

export const DEFAULT_TARGET = "http://localhost:50051";
export const DEFAULT_TIMEOUT_MS = 30_000;

export interface ClientOptions {
  /** Deadline of each unary call; 0 for none. Default 30 s. */
  readonly timeoutMs?: number;
  /** An API key or a JWT: every call carries `authorization: Bearer <token>`. */
  readonly token?: string;
  /** A transport of your own (TLS, interceptors...); `target` is then ignored. */
  readonly transport?: Transport;
  /** Options for the gRPC transport the client creates (e.g. `nodeOptions` for TLS). */
  readonly transportOptions?: Partial<GrpcTransportOptions>;
}

export interface SubmitOptions {
  readonly options?: BatchOptions;
  readonly metadata?: Record<string, string>;
  /** Makes the call safe to retry: a replay with the same body returns the original. */
  readonly requestId?: string;
  /** An id of your choosing; ALREADY_EXISTS if taken. */
  readonly batchId?: string;
  /** Send params as a google.protobuf.Struct instead of compact JSON bytes. */
  readonly paramsStruct?: boolean;
}

export interface UploadOptions extends SubmitOptions {
  /**
   * Start items as their messages arrive, not once the last one has: the batch exists
   * from the header on, holding `itemCount` items (or `items.length` for an array). An
   * upload that fails part-way then leaves its batch CANCELLED, with the items that
   * ran kept.
   */
  readonly startEarly?: boolean;
  readonly itemCount?: number;
  readonly itemsPerMessage?: number;
  readonly maxMessageBytes?: number;
  /** Deadline of the whole upload; none by default. */
  readonly timeoutMs?: number;
}

export interface SubmitResult {
  readonly batch: Batch;
  /** True when the requestId had been seen and the original batch is returned. */
  readonly replayed: boolean;
}

export interface Page<T> {
  readonly items: readonly T[];
  /** Pass as `pageToken` for the next page; empty on the last page. */
  readonly nextPageToken: string;
}

export interface PageOptions<S> {
  readonly states?: readonly S[];
  /** Per page, 1 to 1,000; 0 (the default) means the service's 100. */
  readonly pageSize?: number;
}

/** What `update()` changes; the options not given are kept. */
export interface BatchUpdate {
  readonly priority?: number;
  readonly maxPerSecond?: number;
  readonly burst?: number;
  readonly maxConcurrent?: number;
}

const UPDATE_FIELDS = {
  priority: "priority",
  maxPerSecond: "max_per_second",
  burst: "burst",
  maxConcurrent: "max_concurrent",
} as const;

export interface ExportOptions {
  /** SUBMISSION (the default) or CUSTOM_ID, in byte order. */
  readonly order?: ExportOrder;
  /** The `cursor` of a page of an earlier export of the same order: carry on after it. */
  readonly after?: string;
  /** Deadline of the whole export; none by default. */
  readonly timeoutMs?: number;
  /** Stops the export: the iteration ends with the signal's reason. */
  readonly signal?: AbortSignal;
}

export interface WatchOptions {
  /** The least time between two snapshots; default 250 ms. */
  readonly minIntervalMs?: number;
  /** How long the stream may stay silent before a heartbeat; default: the service's. */
  readonly heartbeatIntervalMs?: number;
  readonly retry?: Partial<WatchRetry>;
  /** Called each time the stream is lost, before waiting to reconnect. */
  readonly onReconnect?: (reconnect: WatchReconnect) => void;
  /** Stops the watch: the iteration ends with the signal's reason. */
  readonly signal?: AbortSignal;
}

// Safe to repeat on UNAVAILABLE: they read, or (CancelBatch) are idempotent. SubmitBatch
// is only with a request_id: the service answers a repeat with the original batch.
const RETRIED_METHODS = new Set([
  "GetBatch",
  "ListBatches",
  "CancelBatch",
  "ListBatchItems",
  "ListHandlers",
]);
const RETRY_ATTEMPTS = 4;

function repeatable(request: UnaryRequest): boolean {
  if (RETRIED_METHODS.has(request.method.name)) {
    return true;
  }
  const message = request.message;
  return isMessage(message, SubmitBatchRequestSchema) && message.requestId !== "";
}

/** Sends the read-only and idempotent unary calls, and a submit with a request_id, again
 * when they fail UNAVAILABLE (a connection lost included): up to 4 attempts in all,
 * 0.2 s to 3 s apart. */
const retryIdempotent: Interceptor = (next) => async (request) => {
  if (request.stream || !repeatable(request)) {
    return next(request);
  }
  for (let attempt = 1; ; attempt++) {
    try {
      return await next(request);
    } catch (error) {
      const code = ConnectError.from(lostConnection(error, request.signal)).code;
      if (code !== Code.Unavailable || attempt >= RETRY_ATTEMPTS || request.signal.aborted) {
        throw error;
      }
      await sleep(Math.min(3000, 200 * 2 ** (attempt - 1)) * (0.5 + Math.random() * 0.5));
    }
  }
};

function baseUrl(target: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(target) ? target : `http://${target}`;
}

function bearerHeaders(token: string | undefined): Record<string, string> {
  const word = (token ?? "").trim();
  if (word === "") {
    return {};
  }
  if (/[\s\x00-\x1f\x7f]/.test(word)) {
    throw new RangeError("token: a single word without spaces or control characters");
  }
  return { authorization: `Bearer ${word}` };
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * A client of batchd.v1.BatchService.
 *
 *     const client = new BatchdClient("127.0.0.1:50051");
 *     const { batch } = await client.upload("noop", items);
 *     for await (const { progress } of client.watch(batch.batchId)) { ... }
 *
 * `target` is `host:port` (plaintext) or a URL (`https://host:port` for TLS). Every
 * failed call throws `BatchdError`.
 */
export class BatchdClient {
  private readonly client: Client<typeof BatchService>;
  private readonly headers: Record<string, string>;
  private readonly timeoutMs: number;

  constructor(target: string = DEFAULT_TARGET, options: ClientOptions = {}) {
    const transport =
      options.transport ??
      createGrpcTransport({
        baseUrl: baseUrl(target),
        ...options.transportOptions,
        interceptors: [retryIdempotent, ...(options.transportOptions?.interceptors ?? [])],
      });
    this.client = createClient(BatchService, transport);
    this.headers = bearerHeaders(options.token);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  private unary(): CallOptions {
    return this.timeoutMs > 0
      ? { headers: this.headers, timeoutMs: this.timeoutMs }
      : { headers: this.headers };
  }

  /** Submits a batch in one message (SubmitBatch): up to 10,000 items and 4 MiB. Use
   * `upload()` for anything larger or for items you would rather stream.
   *
   * With a `requestId`, a call that fails UNAVAILABLE (its server lost mid-call) is sent
   * again, up to 3 times: the service answers a repeat with the batch the first call
   * created (`replayed`), so nothing is submitted twice. Without one it is not. */
  async submit(
    handler: string,
    items: Iterable<ItemLike>,
    options: SubmitOptions = {},
  ): Promise<SubmitResult> {
    const converted = Array.from(items, (item, index) =>
      toItem(item, index, options.paramsStruct ?? false),
    );
    let size = 0;
    converted.forEach((item, index) => {
      size += checkedSize(item, index) + 5;
    });
    if (size > MAX_REQUEST_BYTES) {
      throw new BatchdError(
        Code.InvalidArgument,
        `the items are over ${size} bytes, more than the ${MAX_REQUEST_BYTES} the service ` +
          "reads in one message: submit fewer items per call, or upload() them",
      );
    }
    const response = await rpc(() =>
      this.client.submitBatch(
        {
          handler,
          items: converted,
          options: options.options,
          metadata: options.metadata ?? {},
          requestId: options.requestId ?? "",
          batchId: options.batchId ?? "",
        },
        this.unary(),
      ),
    );
    return { batch: required(response.batch), replayed: response.replayed };
  }

  /**
   * Submits a batch of any size as a stream (UploadBatch): a header, then messages of up
   * to `itemsPerMessage` items (and `maxMessageBytes`), then the end message that
   * commits the batch.
   *
   * Items are pulled from `items` only as messages are sent, so it is never held in
   * memory whole. If it throws (or an item is invalid), the upload is abandoned, so the
   * service keeps nothing, and the error propagates unchanged.
   */
  async upload(
    handler: string,
    items: Iterable<ItemLike> | AsyncIterable<ItemLike>,
    options: UploadOptions = {},
  ): Promise<SubmitResult> {
    const header = create(UploadBatchHeaderSchema, {
      handler,
      options: options.options,
      metadata: options.metadata ?? {},
      requestId: options.requestId ?? "",
      batchId: options.batchId ?? "",
      startEarly: options.startEarly ?? false,
      itemCount: BigInt(announcedCount(items, options)),
    });
    const packer = new UploadPacker(
      options.itemsPerMessage ?? DEFAULT_ITEMS_PER_MESSAGE,
      options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      options.paramsStruct ?? false,
      options.startEarly === true ? FIRST_EARLY_MESSAGE_ITEMS : undefined,
    );
    let itemsError: { error: unknown } | undefined;
    async function* guarded() {
      const messages = uploadRequests(header, items, packer);
      try {
        for (;;) {
          let next: IteratorResult<UploadBatchRequest>;
          try {
            next = await messages.next();
          } catch (error) {
            // Not thrown into the call, which would only reset the stream: a second
            // header makes the service refuse the upload and drop what it staged.
            itemsError = { error };
            yield ABANDON;
            return;
          }
          if (next.done === true) {
            return;
          }
          yield next.value; // what the call throws in here (it ended) goes back to it
        }
      } finally {
        await messages.return(undefined);
      }
    }
    const callOptions: CallOptions =
      options.timeoutMs === undefined
        ? { headers: this.headers }
        : { headers: this.headers, timeoutMs: options.timeoutMs };
    let response;
    try {
      response = await this.client.uploadBatch(guarded(), callOptions);
    } catch (error) {
      if (itemsError !== undefined) {
        throw itemsError.error;
      }
      throw BatchdError.from(lostConnection(error));
    }
    if (itemsError !== undefined) {
      throw itemsError.error; // the service cannot commit without the end message
    }
    return { batch: required(response.batch), replayed: response.replayed };
  }

  /** Returns one batch. */
  async get(batchId: string): Promise<Batch> {
    const response = await rpc(() => this.client.getBatch({ batchId }, this.unary()));
    return required(response.batch);
  }

  /** Returns one page of batches, newest first. */
  async listPage(
    options: PageOptions<BatchState> & { readonly pageToken?: string } = {},
  ): Promise<Page<Batch>> {
    const response = await rpc(() =>
      this.client.listBatches(
        {
          states: [...(options.states ?? [])],
          pageSize: options.pageSize ?? 0,
          pageToken: options.pageToken ?? "",
        },
        this.unary(),
      ),
    );
    return { items: response.batches, nextPageToken: response.nextPageToken };
  }

  /** Yields every batch (in one of `states`, if given), newest first, page by page. */
  async *list(options: PageOptions<BatchState> = {}): AsyncGenerator<Batch> {
    let pageToken = "";
    do {
      const page = await this.listPage({ ...options, pageToken });
      yield* page.items;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /** Returns one page of a batch's item outcomes, in submission order. */
  async itemsPage(
    batchId: string,
    options: PageOptions<ItemState> & { readonly pageToken?: string } = {},
  ): Promise<Page<BatchItem>> {
    const response = await rpc(() =>
      this.client.listBatchItems(
        {
          batchId,
          states: [...(options.states ?? [])],
          pageSize: options.pageSize ?? 0,
          pageToken: options.pageToken ?? "",
        },
        this.unary(),
      ),
    );
    return { items: response.items, nextPageToken: response.nextPageToken };
  }

  /** Yields the outcome of every item (in one of `states`, if given), page by page. */
  async *items(batchId: string, options: PageOptions<ItemState> = {}): AsyncGenerator<BatchItem> {
    let pageToken = "";
    do {
      const page = await this.itemsPage(batchId, { ...options, pageToken });
      yield* page.items;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /** Cancels a batch; returns it as it stands after the request. Idempotent. */
  async cancel(batchId: string): Promise<Batch> {
    const response = await rpc(() => this.client.cancelBatch({ batchId }, this.unary()));
    return required(response.batch);
  }

  /** Pauses a QUEUED or RUNNING batch: no new item starts, running ones finish. */
  async pause(batchId: string): Promise<Batch> {
    const response = await rpc(() => this.client.pauseBatch({ batchId }, this.unary()));
    return required(response.batch);
  }

  /** Resumes a PAUSED batch. Idempotent. */
  async resume(batchId: string): Promise<Batch> {
    const response = await rpc(() => this.client.resumeBatch({ batchId }, this.unary()));
    return required(response.batch);
  }

  /** Changes the options given (the others are kept) of a queued, running or paused
   * batch. INVALID_ARGUMENT when none is given or a value is out of range. */
  async update(batchId: string, changes: BatchUpdate): Promise<Batch> {
    const given = (Object.keys(UPDATE_FIELDS) as (keyof BatchUpdate)[]).filter(
      (name) => changes[name] !== undefined,
    );
    const options = Object.fromEntries(given.map((name) => [name, changes[name]]));
    const paths = given.map((name) => UPDATE_FIELDS[name]);
    const response = await rpc(() =>
      this.client.updateBatch({ batchId, options, updateMask: { paths } }, this.unary()),
    );
    return required(response.batch);
  }

  /** Runs FAILED and EXPIRED items again (every one, or those in `customIds`). */
  async retry(
    batchId: string,
    customIds: readonly string[] = [],
    requestId = "",
  ): Promise<{ batch: Batch; requeued: bigint; replayed: boolean }> {
    const response = await rpc(() =>
      this.client.retryBatchItems(
        { batchId, customIds: [...customIds], requestId },
        this.unary(),
      ),
    );
    return {
      batch: required(response.batch),
      requeued: response.requeued,
      replayed: response.replayed,
    };
  }

  /** Deletes a finished batch and all its item outcomes. */
  async delete(batchId: string): Promise<void> {
    await rpc(() => this.client.deleteBatch({ batchId }, this.unary()));
  }

  /**
   * Yields a finished batch's results as pages of JSON Lines (`lines`, UTF-8, one object
   * per item, each line ending with "\n"), in submission order or by custom_id, each
   * with the `cursor` to carry on after it and its `position` of `totalItems`.
   *
   * FAILED_PRECONDITION while the batch is unfinished; an export that breaks off carries
   * on with `after` set to the last page's cursor.
   */
  async *exportResults(
    batchId: string,
    options: ExportOptions = {},
  ): AsyncGenerator<ExportBatchResultsResponse> {
    const call = new AbortController();
    const signal = options.signal;
    const abort = (): void => call.abort(signal?.reason);
    signal?.addEventListener("abort", abort, { once: true });
    const callOptions: CallOptions = { headers: this.headers, signal: call.signal };
    try {
      yield* this.client.exportBatchResults(
        { batchId, order: options.order ?? ExportOrder.SUBMISSION, after: options.after ?? "" },
        options.timeoutMs === undefined
          ? callOptions
          : { ...callOptions, timeoutMs: options.timeoutMs },
      );
    } catch (error) {
      signal?.throwIfAborted();
      throw BatchdError.from(lostConnection(error, call.signal));
    } finally {
      signal?.removeEventListener("abort", abort);
      call.abort();
    }
  }

  /** Returns the handlers that workers have published. */
  async handlers(): Promise<HandlerInfo[]> {
    const response = await rpc(() => this.client.listHandlers({}, this.unary()));
    return response.handlers;
  }

  /**
   * Yields progress snapshots of a batch until, and including, the terminal one.
   *
   * The first snapshot comes at once, then one per change (at most one per
   * `minIntervalMs`) and a heartbeat when nothing changes. A lost stream (UNAVAILABLE,
   * a connection gone, a server closing it early) is reopened with backoff per `retry`;
   * the next snapshot simply carries on. Other errors, and running out of retries, throw
   * `BatchdError`.
   */
  async *watch(batchId: string, options: WatchOptions = {}): AsyncGenerator<WatchSnapshot> {
    const session = new WatchSession(
      batchId,
      { ...DEFAULT_WATCH_RETRY, ...options.retry },
      options.onReconnect,
    );
    const request = create(WatchProgressRequestSchema, {
      batchId,
      minInterval: durationFromMs(options.minIntervalMs ?? 250),
      heartbeatInterval:
        options.heartbeatIntervalMs === undefined
          ? undefined
          : durationFromMs(options.heartbeatIntervalMs),
    });
    const signal = options.signal;
    for (;;) {
      // Each stream is aborted when the watch stops, however it stops; after the
      // terminal snapshot, once the service has ended it (or CLOSE_GRACE_MS has passed).
      const stream = new AbortController();
      const abort = (): void => stream.abort(signal?.reason);
      signal?.addEventListener("abort", abort, { once: true });
      let error: BatchdError;
      const call = this.client.watchProgress(request, {
        headers: this.headers,
        signal: stream.signal,
      });
      const responses = call[Symbol.asyncIterator]();
      let terminal = false;
      try {
        for (;;) {
          const next = await responses.next();
          if (next.done === true) {
            break;
          }
          const snapshot = session.snapshot(next.value);
          terminal = snapshot.terminal;
          yield snapshot;
          if (terminal) {
            return;
          }
        }
        error = session.endedEarly();
      } catch (thrown) {
        signal?.throwIfAborted();
        error = session.failed(lostConnection(thrown, stream.signal));
      } finally {
        signal?.removeEventListener("abort", abort);
        if (terminal) {
          await serviceEnds(responses, stream);
        }
        stream.abort();
      }
      await sleep(session.backoff(error), signal);
    }
  }

  /**
   * Yields the events of the caller's tenant's batches as they happen, for ever.
   *
   * Only events passing every filter given (`states`, `labels`, `handler`, `types`);
   * from after `cursor`, else from the oldest event retained with `fromOldest`, else
   * from now. A lost stream (UNAVAILABLE) is resumed from the last cursor received, with
   * backoff per `retry`: no event lost, none repeated. A cursor whose events were
   * trimmed throws `BatchdError` FAILED_PRECONDITION, as do other errors and running
   * out of retries.
   */
  async *watchBatches(options: WatchBatchesOptions = {}): AsyncGenerator<BatchEvent> {
    const session = new EventsSession(options, { ...DEFAULT_WATCH_RETRY, ...options.retry });
    const signal = options.signal;
    for (;;) {
      const stream = new AbortController();
      const abort = (): void => stream.abort(signal?.reason);
      signal?.addEventListener("abort", abort, { once: true });
      let error: BatchdError;
      try {
        for await (const response of this.client.watchBatches(session.request(), {
          headers: this.headers,
          signal: stream.signal,
        })) {
          const { event, heartbeat } = session.received(response);
          if (!heartbeat || options.heartbeats === true) {
            yield event;
          }
        }
        error = session.endedEarly();
      } catch (thrown) {
        signal?.throwIfAborted();
        error = session.failed(lostConnection(thrown, stream.signal));
      } finally {
        signal?.removeEventListener("abort", abort);
        stream.abort();
      }
      await sleep(session.backoff(error, options.onReconnect), signal);
    }
  }
}

function required(batch: Batch | undefined): Batch {
  if (batch === undefined) {
    throw new BatchdError(Code.Internal, "the service's response carries no batch");
  }
  return batch;
}

/** The items an upload that starts early announces; 0 without `startEarly`. */
function announcedCount(
  items: Iterable<ItemLike> | AsyncIterable<ItemLike>,
  options: UploadOptions,
): number {
  if (options.startEarly !== true) return 0;
  if (options.itemCount !== undefined) return options.itemCount;
  if (Array.isArray(items)) return items.length;
  throw new Error(
    "startEarly needs itemCount (how many items the upload carries) unless items is an array",
  );
}

/** Milliseconds a watch that got its terminal snapshot waits for the service to end the
 * stream, which it does at once (OK), before aborting it: a stream reset while the
 * service closes it costs the service more than the close, and one ending thousands of
 * watches at once feels it. */
export const CLOSE_GRACE_MS = 1000;

/** Reads a watch's stream to its end, aborting it past CLOSE_GRACE_MS. */
async function serviceEnds(
  responses: AsyncIterator<unknown>,
  stream: AbortController,
): Promise<void> {
  const timer = setTimeout(() => stream.abort(), CLOSE_GRACE_MS);
  try {
    while ((await responses.next()).done !== true) {
      // Nothing comes after the terminal snapshot but the end.
    }
  } catch {
    // Aborted past the grace, or the connection went: either way the stream is over.
  } finally {
    clearTimeout(timer);
  }
}
