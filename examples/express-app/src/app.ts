/**
 * A web app in front of batchd: uploads, status, live progress and results over HTTP.
 *
 *     POST /batches?handler=NAME   a CSV (text/csv) or JSON Lines (application/x-ndjson)
 *                                  body, streamed into a batch; 201 and the batch
 *     GET  /batches/:id            the batch, as JSON
 *     GET  /batches/:id/events     its progress as server-sent events, one `data:` JSON
 *                                  per snapshot, until the terminal one
 *     GET  /batches/:id/results    a finished batch's results, JSON Lines
 *
 * The app shares one `BatchdClient` (one HTTP/2 connection) among all requests. Errors:
 * errors.ts.
 */

import { once } from "node:events";

import express, { type Express, type Request, type Response } from "express";

import {
  type Batch,
  type BatchdClient,
  BatchState,
  isTerminal,
  type ItemCounts,
  type WatchSnapshot,
} from "@batchd/client";

import { sendError } from "./errors.js";
import { type Format, lineOf, rows } from "./rows.js";

/** The media types an upload may have, by format. */
const FORMATS = new Map<string, Format>([
  ["text/csv", "csv"],
  ["application/x-ndjson", "jsonl"],
  ["application/jsonl", "jsonl"],
  ["application/json-lines", "jsonl"],
]);

export function createApp(client: BatchdClient): Express {
  const app = express();
  app.disable("x-powered-by");
  app.post("/batches", (req, res) => upload(client, req, res));
  app.get("/batches/:id", (req, res) => status(client, req, res));
  app.get("/batches/:id/events", (req, res) => events(client, req, res));
  app.get("/batches/:id/results", (req, res) => results(client, req, res));
  return app;
}

/** Streams the body, row by row, into a new batch of `handler`. An `Idempotency-Key`
 * header is the batch's request_id: a repeat answers 200 with the batch the first made. */
async function upload(client: BatchdClient, req: Request, res: Response): Promise<void> {
  const handler = req.query["handler"];
  if (typeof handler !== "string" || handler === "") {
    const violation = { field: "handler", line: null, description: "a handler name is required" };
    res.status(422).json({ detail: "no handler", violations: [violation] });
    return;
  }
  const mediaType = (req.get("content-type") ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
  const format = FORMATS.get(mediaType);
  if (format === undefined) {
    res.status(415).json({ detail: `send one of: ${[...FORMATS.keys()].join(", ")}` });
    return;
  }
  let result;
  try {
    result = await client.upload(handler, rows(req, format), {
      requestId: req.get("idempotency-key") ?? "",
    });
  } catch (error) {
    if (req.destroyed && !req.complete) {
      return; // the upload abandoned: batchd kept nothing, nobody listens
    }
    // The rest of the body is not read: the connection closes after the answer.
    res.set("Connection", "close");
    sendError(res, error, (index) => lineOf(format, index));
    return;
  }
  res
    .status(result.replayed ? 200 : 201)
    .location(`/batches/${encodeURIComponent(result.batch.batchId)}`)
    .json(batchJson(result.batch));
}

/** The batch, as JSON. */
async function status(client: BatchdClient, req: Request, res: Response): Promise<void> {
  try {
    res.json(batchJson(await client.get(String(req.params["id"]))));
  } catch (error) {
    sendError(res, error);
  }
}

/** Server-sent events: one `data: {...}` per progress snapshot, as `progressJson` gives
 * them, the terminal one last. A browser's EventSource reconnects when a stream ends;
 * the page should close it on a snapshot whose `terminal` is true. */
async function events(client: BatchdClient, req: Request, res: Response): Promise<void> {
  const gone = new AbortController();
  res.on("close", () => gone.abort());
  const snapshots = client.watch(String(req.params["id"]), { signal: gone.signal });
  try {
    const first = await snapshots.next(); // the first snapshot, or NOT_FOUND as a status
    if (first.done === true) {
      res.end();
      return;
    }
    res.status(200);
    res.setHeader("Content-Type", "text/event-stream");
    res.setHeader("Cache-Control", "no-cache");
    res.setHeader("X-Accel-Buffering", "no");
    res.flushHeaders();
    await send(res, `data: ${JSON.stringify(progressJson(first.value))}\n\n`);
    for await (const snapshot of snapshots) {
      await send(res, `data: ${JSON.stringify(progressJson(snapshot))}\n\n`);
    }
    res.end();
  } catch (error) {
    if (gone.signal.aborted) {
      return; // the browser went away; the watch's stream is closed
    }
    if (res.headersSent) {
      res.destroy(); // mid-stream: end without the stream's proper close
      return;
    }
    sendError(res, error);
  } finally {
    await snapshots.return(undefined);
  }
}

/** A finished batch's results as one JSON Lines download, one line per item in
 * submission order; 409 while unfinished. */
async function results(client: BatchdClient, req: Request, res: Response): Promise<void> {
  const batchId = String(req.params["id"]);
  const gone = new AbortController();
  res.on("close", () => gone.abort());
  const pages = client.exportResults(batchId, { signal: gone.signal });
  try {
    const first = await pages.next(); // FAILED_PRECONDITION or NOT_FOUND as a status
    res.status(200);
    res.attachment(`${batchId}.jsonl`);
    res.setHeader("Content-Type", "application/x-ndjson");
    if (first.done !== true) {
      await send(res, first.value.lines);
      for await (const page of pages) {
        await send(res, page.lines);
      }
    }
    res.end();
  } catch (error) {
    if (gone.signal.aborted) {
      return;
    }
    if (res.headersSent) {
      // A stream that breaks off ends the response without its last chunk: the browser
      // or HTTP client reports an incomplete download rather than a short file.
      res.destroy();
      return;
    }
    sendError(res, error);
  } finally {
    await pages.return(undefined);
  }
}

/** Writes a chunk, waiting while the connection's buffer is full. */
async function send(res: Response, chunk: string | Uint8Array): Promise<void> {
  if (!res.write(chunk)) {
    await once(res, "drain");
  }
}

/** What GET /batches/:id answers. */
export function batchJson(batch: Batch): Record<string, unknown> {
  return {
    batch_id: batch.batchId,
    handler: batch.handler,
    state: BatchState[batch.state],
    terminal: isTerminal(batch.state),
    total_items: Number(batch.totalItems),
    counts: countsJson(batch.counts),
    metadata: batch.metadata,
    waiting_reason: batch.waitingReason,
    create_time: time(batch.createTime),
    start_time: time(batch.startTime),
    end_time: time(batch.endTime),
  };
}

/** One server-sent event's data. */
export function progressJson(snapshot: WatchSnapshot): Record<string, unknown> {
  const progress = snapshot.progress;
  const counts = countsJson(progress.counts);
  const total = Number(progress.totalItems);
  const done = counts.succeeded + counts.failed + counts.cancelled + counts.expired;
  const eta = progress.eta;
  return {
    batch_id: progress.batchId,
    state: BatchState[progress.state],
    terminal: snapshot.terminal,
    total_items: total,
    counts,
    fraction: total > 0 ? done / total : snapshot.terminal ? 1 : 0,
    items_per_second: progress.itemsPerSecond,
    eta_seconds: eta === undefined ? null : Number(eta.seconds) + eta.nanos / 1e9,
    heartbeat: snapshot.heartbeat,
    waiting_reason: progress.waitingReason,
  };
}

function countsJson(counts: ItemCounts | undefined) {
  return {
    pending: Number(counts?.pending ?? 0n),
    claimed: Number(counts?.claimed ?? 0n),
    running: Number(counts?.running ?? 0n),
    succeeded: Number(counts?.succeeded ?? 0n),
    failed: Number(counts?.failed ?? 0n),
    cancelled: Number(counts?.cancelled ?? 0n),
    expired: Number(counts?.expired ?? 0n),
  };
}

function time(moment: { seconds: bigint; nanos: number } | undefined): string | null {
  if (moment === undefined) {
    return null;
  }
  return new Date(Number(moment.seconds) * 1000 + Math.floor(moment.nanos / 1e6)).toISOString();
}
