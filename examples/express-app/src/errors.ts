/**
 * batchd's errors as HTTP answers, in one place.
 *
 *     INVALID_ARGUMENT     422  {detail, violations: [{field, line, description}]}
 *     NOT_FOUND            404  {detail}
 *     FAILED_PRECONDITION  409  {detail}   (e.g. the results of an unfinished batch)
 *     ALREADY_EXISTS       409  {detail}
 *     RESOURCE_EXHAUSTED   429  {detail, violations: [{field, description}]},
 *                               Retry-After: seconds
 *     UNAVAILABLE          503  {detail}, Retry-After: 1
 *     anything else        502  {detail: "batchd failed"}: the app's own credentials or
 *                               configuration, nothing the caller can fix; logged here
 *
 * A line of the upload that is no item (`BadRow`) is a 422 like batchd's own.
 */

import type { Response } from "express";

import { BatchdError, Code } from "@batchd/client";

import { BadRow } from "./rows.js";

const STATUS = new Map<Code, number>([
  [Code.InvalidArgument, 422],
  [Code.NotFound, 404],
  [Code.FailedPrecondition, 409],
  [Code.AlreadyExists, 409],
  [Code.ResourceExhausted, 429],
  [Code.Unavailable, 503],
]);

const ITEM = /^items\[(\d+)\]/;

/** Answers a request that failed with `error`: batchd's refusal, a bad line of an
 * upload, or (rethrown) anything else. With `lineOf`, an upload's violations naming
 * `items[<i>]` also give the line of the body it came from. */
export function sendError(res: Response, error: unknown, lineOf?: (index: number) => number): void {
  if (error instanceof BadRow) {
    const violation = { field: error.field, line: error.line, description: error.description };
    res.status(422).json({ detail: error.message, violations: [violation] });
    return;
  }
  if (!(error instanceof BatchdError)) {
    throw error;
  }
  const status = STATUS.get(error.code);
  if (status === undefined) {
    console.error(`batchd call failed: ${error.toString()}`);
    res.status(502).json({ detail: "batchd failed" });
    return;
  }
  const body: Record<string, unknown> = { detail: error.message };
  if (status === 422) {
    body["violations"] = error.fieldViolations.map((v) => ({
      field: v.field,
      line: line(v.field, lineOf),
      description: v.description,
    }));
  } else if (status === 429) {
    body["violations"] = error.quotaViolations.map((v) => ({
      field: v.subject,
      description: v.description,
    }));
    res.set("Retry-After", String(Math.max(1, Math.ceil((error.retryAfterMs ?? 1000) / 1000))));
  } else if (status === 503) {
    res.set("Retry-After", "1");
  }
  res.status(status).json(body);
}

function line(field: string, lineOf?: (index: number) => number): number | null {
  const match = ITEM.exec(field);
  return match?.[1] !== undefined && lineOf !== undefined ? lineOf(Number(match[1])) : null;
}
