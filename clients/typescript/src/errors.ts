/**
 * The client's one error type.
 *
 *     BatchdError            any failed call, and items the client cannot send
 *       .code                Code (connect's enum of the gRPC codes: Code.NotFound, ...)
 *       .codeName            the gRPC name of the code: "NOT_FOUND", "INVALID_ARGUMENT", ...
 *       .message             the status message, as the service wrote it
 *       .fieldViolations     [{field, description}] from google.rpc.BadRequest
 *       .retryAfterMs        from google.rpc.RetryInfo; undefined without one
 *       .quotaViolations     [{subject, description}] from google.rpc.QuotaFailure
 *
 * The service sends rich errors (AIP-193): a google.rpc.Status in the
 * `grpc-status-details-bin` trailer, which connect decodes into ConnectError's details.
 */

import { Code, ConnectError } from "@connectrpc/connect";
import { durationMs } from "@bufbuild/protobuf/wkt";

import {
  BadRequestSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

export { Code };

/** One bad field of a request, e.g. `items[12].custom_id`. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/** A limit a request ran into (RESOURCE_EXHAUSTED), e.g. `max_pending_items`. */
export interface QuotaViolation {
  readonly subject: string;
  readonly description: string;
}

/** The gRPC name of a code: Code.NotFound is "NOT_FOUND" (and 0, which connect has no
 * name for, "OK"). */
export function codeName(code: Code | 0): string {
  if (code === 0) {
    return "OK";
  }
  const name = Code[code];
  if (name === undefined) {
    return `CODE_${code}`;
  }
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** A failed batchd call: a gRPC status code, a message and the rich details. */
export class BatchdError extends Error {
  override readonly name = "BatchdError";
  readonly code: Code;
  readonly fieldViolations: readonly FieldViolation[];
  readonly retryAfterMs: number | undefined;
  readonly quotaViolations: readonly QuotaViolation[];

  constructor(
    code: Code,
    message: string,
    details: {
      fieldViolations?: readonly FieldViolation[];
      retryAfterMs?: number;
      quotaViolations?: readonly QuotaViolation[];
      cause?: unknown;
    } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    this.fieldViolations = details.fieldViolations ?? [];
    this.retryAfterMs = details.retryAfterMs;
    this.quotaViolations = details.quotaViolations ?? [];
  }

  get codeName(): string {
    return codeName(this.code);
  }

  override toString(): string {
    let text = `${this.name}: ${this.codeName}: ${this.message}`;
    for (const violation of this.fieldViolations) {
      text += `\n  ${violation.field}: ${violation.description}`;
    }
    return text;
  }

  /** Builds the error from whatever a call threw (a ConnectError, mostly). */
  static from(error: unknown): BatchdError {
    if (error instanceof BatchdError) {
      return error;
    }
    const connect = ConnectError.from(error);
    const fieldViolations = connect
      .findDetails(BadRequestSchema)
      .flatMap((bad) => bad.fieldViolations)
      .map((v) => ({ field: v.field, description: v.description }));
    const quotaViolations = connect
      .findDetails(QuotaFailureSchema)
      .flatMap((quota) => quota.violations)
      .map((v) => ({ subject: v.subject, description: v.description }));
    const delay = connect.findDetails(RetryInfoSchema)[0]?.retryDelay;
    return new BatchdError(connect.code, connect.rawMessage, {
      fieldViolations,
      quotaViolations,
      retryAfterMs: delay === undefined ? undefined : durationMs(delay),
      cause: error,
    });
  }

  /** An INVALID_ARGUMENT raised by the client itself, naming one field. */
  static invalidArgument(field: string, description: string): BatchdError {
    return new BatchdError(Code.InvalidArgument, `invalid ${field}`, {
      fieldViolations: [{ field, description }],
    });
  }
}

/** The error of a call, with a connection that went away counted as UNAVAILABLE (as
 * gRPC's own clients report it): connect-node ends the streams of a closed HTTP/2
 * session with CANCELED, which only `signal` (the call's own cancellation) may mean. The
 * client cancels no unary or upload call itself: those pass no signal. */
export function lostConnection(error: unknown, signal?: AbortSignal): unknown {
  if (signal?.aborted || !(error instanceof ConnectError) || error.code !== Code.Canceled) {
    return error;
  }
  return new ConnectError(
    `connection lost: ${error.rawMessage}`,
    Code.Unavailable,
    undefined,
    undefined,
    error,
  );
}

/** Runs a unary call, turning whatever it throws into a BatchdError. */
export async function rpc<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw BatchdError.from(lostConnection(error));
  }
}
