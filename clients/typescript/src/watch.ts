/**
 * Watching a batch: the reconnect policy and the bookkeeping of one `watch()`.
 *
 * WatchProgress sends full snapshots, so a watcher that reconnects has lost nothing: it
 * opens a new stream and carries on from the snapshot the service sends first. The
 * stream ends with OK after the terminal snapshot; the client stops there too.
 */

import { Code } from "@connectrpc/connect";

import { type BatchProgress, BatchState } from "./gen/batchd/v1/batch_pb.js";
import type { WatchProgressResponse } from "./gen/batchd/v1/batch_service_pb.js";
import { BatchdError } from "./errors.js";

/** How `watch()` reconnects after losing its stream.
 *
 * Delays grow from `initialBackoffMs` by `multiplier` up to `maxBackoffMs` (with jitter),
 * or follow the service's RetryInfo when it sends one. After `maxRetries` consecutive
 * failures the last error is thrown; every snapshot received resets the count. */
export interface WatchRetry {
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly multiplier: number;
  readonly maxRetries: number;
  readonly retryableCodes: readonly Code[];
}

export const DEFAULT_WATCH_RETRY: WatchRetry = {
  initialBackoffMs: 200,
  maxBackoffMs: 5000,
  multiplier: 2,
  maxRetries: 8,
  retryableCodes: [Code.Unavailable],
};

/** What `watch({ onReconnect })` is told each time the stream is lost, before the watch
 * waits `delayMs` and opens a new one. */
export interface WatchReconnect {
  /** What ended the stream (UNAVAILABLE, mostly). */
  readonly error: BatchdError;
  /** Reconnects in a row, from 1; a snapshot received starts the count again. */
  readonly attempt: number;
  readonly delayMs: number;
}

/** One snapshot yielded by `watch()`. */
export interface WatchSnapshot {
  readonly progress: BatchProgress;
  /** True when nothing changed since the previous snapshot (also across a reconnect). */
  readonly heartbeat: boolean;
  /** True for the last snapshot: the batch is COMPLETED, FAILED or CANCELLED. */
  readonly terminal: boolean;
}

const TERMINAL_STATES: ReadonlySet<BatchState> = new Set([
  BatchState.COMPLETED,
  BatchState.FAILED,
  BatchState.CANCELLED,
]);

/** True for COMPLETED, FAILED and CANCELLED: nothing changes any more. */
export function isTerminal(state: BatchState): boolean {
  return TERMINAL_STATES.has(state);
}

function sameProgress(a: BatchProgress, b: BatchProgress): boolean {
  const countsA = a.counts;
  const countsB = b.counts;
  const sameCounts =
    countsA === undefined || countsB === undefined
      ? countsA === countsB
      : countsA.pending === countsB.pending &&
        countsA.running === countsB.running &&
        countsA.succeeded === countsB.succeeded &&
        countsA.failed === countsB.failed &&
        countsA.cancelled === countsB.cancelled &&
        countsA.expired === countsB.expired &&
        countsA.claimed === countsB.claimed;
  return a.state === b.state && a.totalItems === b.totalItems && sameCounts;
}

/** The state of one `watch()` across its streams. */
export class WatchSession {
  private failures = 0;
  private last: BatchProgress | undefined;
  private reconnected = false;

  constructor(
    readonly batchId: string,
    readonly policy: WatchRetry,
    readonly onReconnect?: (reconnect: WatchReconnect) => void,
  ) {}

  /** Converts a received message; the first one after a reconnect counts as a heartbeat
   * when it shows what the previous stream showed last. */
  snapshot(response: WatchProgressResponse): WatchSnapshot {
    const progress = response.progress;
    if (progress === undefined) {
      throw new BatchdError(Code.Internal, "a WatchProgress message without progress");
    }
    let heartbeat = response.heartbeat;
    if (this.reconnected && this.last !== undefined && !heartbeat) {
      heartbeat = sameProgress(progress, this.last);
    }
    this.reconnected = false;
    this.failures = 0;
    this.last = progress;
    return { progress, heartbeat, terminal: isTerminal(progress.state) };
  }

  /** The stream closed with OK before a terminal snapshot (a server going away). */
  endedEarly(): BatchdError {
    return new BatchdError(
      Code.Unavailable,
      `watch of batch ${JSON.stringify(this.batchId)} ended before the batch finished`,
    );
  }

  /** Maps a stream error; throws it unless the policy retries it. */
  failed(error: unknown): BatchdError {
    const batchdError = BatchdError.from(error);
    if (!this.policy.retryableCodes.includes(batchdError.code)) {
      throw batchdError;
    }
    return batchdError;
  }

  /** Counts a failure; returns the delay before reconnecting, or throws `error` once
   * the retries are used up. */
  backoff(error: BatchdError): number {
    this.failures += 1;
    if (this.failures > this.policy.maxRetries) {
      throw error;
    }
    const delayMs = this.delay(error.retryAfterMs);
    this.reconnected = true;
    this.onReconnect?.({ error, attempt: this.failures, delayMs });
    return delayMs;
  }

  private delay(retryAfterMs: number | undefined): number {
    if (retryAfterMs !== undefined) {
      return Math.max(0, retryAfterMs);
    }
    const { initialBackoffMs, multiplier, maxBackoffMs } = this.policy;
    const ceiling = Math.min(maxBackoffMs, initialBackoffMs * multiplier ** (this.failures - 1));
    return ceiling * (0.5 + Math.random() * 0.5);
  }
}
