/**
 * Watching batch events: the resume bookkeeping of one `watchBatches()`.
 *
 * Every WatchBatches message carries the cursor the stream has read up to (the first
 * one, a heartbeat, where it starts), so a watch that loses its stream opens a new one
 * from the last cursor it received: no event is lost and none repeated. The reconnect
 * policy is `watch()`'s (`WatchRetry`).
 */

import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";

import type { BatchState } from "./gen/batchd/v1/batch_pb.js";
import {
  type BatchEvent,
  BatchEventSchema,
  type BatchEventType,
  type WatchBatchesRequest,
  WatchBatchesRequestSchema,
  type WatchBatchesResponse,
} from "./gen/batchd/v1/batch_service_pb.js";
import { BatchdError } from "./errors.js";
import type { WatchReconnect, WatchRetry } from "./watch.js";

export interface WatchBatchesOptions {
  /** Only events leaving the batch in one of these states. */
  readonly states?: readonly BatchState[];
  /** Only batches whose metadata holds every one of these pairs. */
  readonly labels?: Readonly<Record<string, string>>;
  /** Only batches of this handler. */
  readonly handler?: string;
  /** Only events of these types. */
  readonly types?: readonly BatchEventType[];
  /** Start after this event's cursor. */
  readonly cursor?: string;
  /** Without a cursor: start with the oldest event retained, not from now. */
  readonly fromOldest?: boolean;
  /** How long the stream may stay silent before a heartbeat; default: the service's. */
  readonly heartbeatIntervalMs?: number;
  /** Yield heartbeats too: a BatchEvent of type UNSPECIFIED with only its cursor. */
  readonly heartbeats?: boolean;
  readonly retry?: Partial<WatchRetry>;
  /** Called each time the stream is lost, before waiting to resume. */
  readonly onReconnect?: (reconnect: WatchReconnect) => void;
  /** Stops the watch: the iteration ends with the signal's reason. */
  readonly signal?: AbortSignal;
}

/** The state of one `watchBatches()` across its streams. */
export class EventsSession {
  /** The cursor to resume from: the last one received (or the one given). */
  cursor: string;
  private failures = 0;
  private readonly given: string;
  private readonly first: WatchBatchesRequest;

  constructor(
    options: WatchBatchesOptions,
    readonly policy: WatchRetry,
  ) {
    this.cursor = options.cursor ?? "";
    this.given = this.cursor;
    this.first = create(WatchBatchesRequestSchema, {
      states: [...(options.states ?? [])],
      labels: { ...options.labels },
      handler: options.handler ?? "",
      types: [...(options.types ?? [])],
      cursor: this.cursor,
      fromOldest: options.fromOldest ?? false,
      heartbeatInterval:
        options.heartbeatIntervalMs === undefined
          ? undefined
          : durationFromMs(options.heartbeatIntervalMs),
    });
  }

  /** The request of the next stream: after the last cursor received (the first one as
   * asked, for the service to judge). */
  request(): WatchBatchesRequest {
    if (this.cursor === this.given) {
      return this.first;
    }
    return { ...this.first, cursor: this.cursor, fromOldest: false };
  }

  /** The event of a received message (a heartbeat's: only its cursor), the cursor moved
   * past it. */
  received(response: WatchBatchesResponse): { event: BatchEvent; heartbeat: boolean } {
    const event = response.event ?? create(BatchEventSchema, { cursor: response.cursor });
    if (response.cursor !== "") {
      this.cursor = response.cursor;
    }
    this.failures = 0;
    return { event, heartbeat: response.heartbeat };
  }

  /** The stream closed with OK (a server going away): resumed like a lost one. */
  endedEarly(): BatchdError {
    return new BatchdError(Code.Unavailable, "the event stream ended");
  }

  /** Maps a stream error; throws it unless the policy retries it. */
  failed(error: unknown): BatchdError {
    const batchdError = BatchdError.from(error);
    if (!this.policy.retryableCodes.includes(batchdError.code)) {
      throw batchdError;
    }
    return batchdError;
  }

  /** Counts a failure; the delay before resuming, or throws `error` once the retries
   * are used up. */
  backoff(error: BatchdError, onReconnect?: (reconnect: WatchReconnect) => void): number {
    this.failures += 1;
    if (this.failures > this.policy.maxRetries) {
      throw error;
    }
    let delayMs = error.retryAfterMs;
    if (delayMs === undefined) {
      const { initialBackoffMs, multiplier, maxBackoffMs } = this.policy;
      const ceiling = Math.min(maxBackoffMs, initialBackoffMs * multiplier ** (this.failures - 1));
      delayMs = ceiling * (0.5 + Math.random() * 0.5);
    }
    onReconnect?.({ error, attempt: this.failures, delayMs: Math.max(0, delayMs) });
    return Math.max(0, delayMs);
  }
}
