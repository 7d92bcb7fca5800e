/**
 * Items from an uploaded CSV or JSON Lines body, read line by line as it arrives.
 *
 * `rows()` is an async generator over `readline` on the request stream: the client's
 * `upload()` pulls items only as it sends them, so the body streams from the browser
 * through the app to batchd and a file of any size takes the memory of a line or two.
 *
 * One item per line, every line an item: a blank line between rows is refused, so an
 * item's index (`items[7]`, as batchd names it) is its line less a fixed offset
 * (`lineOf`). Blank lines at the end are ignored.
 *
 * JSON Lines: each line an object `{"custom_id": "a", "params": {...}}`; a line without a
 * custom_id gets `line-<n>`, one without params gets `{}`.
 *
 * CSV: a header row, then one row per item. A `custom_id` column, if there is one, gives
 * the custom_id (else `line-<n>`); every other column is a param, named by its header. A
 * cell that is JSON (`3`, `0.5`, `true`, `null`, `"007"`, `[1, 2]`) is that value, any
 * other cell is its text, an empty cell is left out. Quoted cells may not span lines.
 */

import { createInterface } from "node:readline";
import { pipeline, type Readable, Transform, type TransformCallback } from "node:stream";

import type { ItemLike, Params } from "@batchd/client";

export type Format = "csv" | "jsonl";

/** The longest line read: batchd takes items of up to 4 MiB encoded. */
export const MAX_LINE_BYTES = 4 << 20;

/** A line of the body that is no item; `field` names the part of it at fault. */
export class BadRow extends Error {
  override readonly name = "BadRow";
  constructor(
    readonly line: number,
    readonly description: string,
    readonly field = "",
  ) {
    super(`line ${line}: ${description}`);
  }
}

/** The line (from 1) of the item batchd calls `items[index]`. */
export function lineOf(format: Format, index: number): number {
  return index + (format === "csv" ? 2 : 1);
}

/** Passes bytes through, failing once a line runs past `MAX_LINE_BYTES`: readline
 * itself would buffer a line of any length. */
class LineLimit extends Transform {
  private run = 0; // bytes since the last newline
  private lines = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    let start = 0;
    for (let end = chunk.indexOf(10); end >= 0; end = chunk.indexOf(10, start)) {
      this.lines += 1;
      this.run = 0;
      start = end + 1;
    }
    this.run += chunk.length - start;
    if (this.run > MAX_LINE_BYTES) {
      done(new BadRow(this.lines + 1, `longer than ${MAX_LINE_BYTES} bytes`));
      return;
    }
    done(null, chunk);
  }
}

/** The items of a request body in `format`. A body that breaks off (the client gone)
 * throws, so the upload is abandoned rather than committed short. */
export async function* rows(body: Readable, format: Format): AsyncGenerator<ItemLike> {
  // pipeline() fails the limit's stream, and so readline, when the body ends early.
  const limited = pipeline(body, new LineLimit(), () => {});
  const lines = createInterface({ input: limited, crlfDelay: Infinity });
  let header: string[] | undefined;
  let blank = 0; // the first of the blank lines just read, if any
  let number = 0;
  try {
    for await (const line of lines) {
      number += 1;
      if (line.trim() === "") {
        blank = blank || number;
        continue;
      }
      if (blank) {
        throw new BadRow(blank, "a blank line between rows");
      }
      checkText(number, line);
      if (format === "jsonl") {
        yield jsonItem(number, line);
      } else if (header === undefined) {
        header = headerOf(line);
      } else {
        yield csvItem(number, line, header);
      }
    }
  } finally {
    lines.close();
  }
}

function checkText(number: number, line: string): void {
  // readline decodes UTF-8, with U+FFFD for bytes that are not: refuse those.
  if (line.includes("\uFFFD")) {
    throw new BadRow(number, "not UTF-8 (or holds U+FFFD)");
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function jsonItem(number: number, line: string): ItemLike {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    throw new BadRow(number, `not valid JSON: ${(error as Error).message}`);
  }
  if (!isObject(value)) {
    const kind = Array.isArray(value) ? "array" : value === null ? "null" : typeof value;
    throw new BadRow(number, `expected a JSON object, not ${kind}`);
  }
  const unknown = Object.keys(value).filter((k) => k !== "custom_id" && k !== "params");
  if (unknown.length > 0) {
    throw new BadRow(number, "only custom_id and params are allowed", unknown.sort()[0]);
  }
  const customId = value["custom_id"] ?? `line-${number}`;
  if (typeof customId !== "string") {
    throw new BadRow(number, "must be a string", "custom_id");
  }
  const params = value["params"] ?? {};
  if (!isObject(params)) {
    throw new BadRow(number, "must be a JSON object", "params");
  }
  return { customId, params: params as Params };
}

/** The cells of one CSV line (RFC 4180, a quoted cell on one line). */
export function cells(number: number, line: string): string[] {
  const out: string[] = [];
  let i = 0;
  for (;;) {
    let cell = "";
    if (line[i] === '"') {
      i += 1;
      for (;;) {
        const quote = line.indexOf('"', i);
        if (quote < 0) {
          throw new BadRow(number, "not CSV: a quoted cell does not end on its line");
        }
        cell += line.slice(i, quote);
        i = quote + 1;
        if (line[i] === '"') {
          cell += '"';
          i += 1;
        } else {
          break;
        }
      }
      if (i < line.length && line[i] !== ",") {
        throw new BadRow(number, `not CSV: "," expected after a quoted cell, at ${i + 1}`);
      }
    } else {
      const comma = line.indexOf(",", i);
      const end = comma < 0 ? line.length : comma;
      cell = line.slice(i, end);
      if (cell.includes('"')) {
        throw new BadRow(number, "not CSV: a quote inside an unquoted cell");
      }
      i = end;
    }
    out.push(cell);
    if (i >= line.length) {
      return out;
    }
    i += 1; // the comma
  }
}

function headerOf(line: string): string[] {
  const names = cells(1, line);
  for (const name of names) {
    if (name === "" || names.indexOf(name) !== names.lastIndexOf(name)) {
      throw new BadRow(1, "column names must be non-empty and different", name);
    }
  }
  return names;
}

function csvItem(number: number, line: string, header: readonly string[]): ItemLike {
  const row = cells(number, line);
  if (row.length !== header.length) {
    throw new BadRow(number, `${row.length} cells for ${header.length} columns`);
  }
  let customId = `line-${number}`;
  const params: Record<string, unknown> = {};
  header.forEach((name, i) => {
    const cell = row[i] ?? "";
    if (name === "custom_id") {
      customId = cell;
    } else if (cell !== "") {
      params[name] = value(cell);
    }
  });
  return { customId, params: params as Params };
}

/** A cell that is JSON is that value; any other cell is its text. */
function value(cell: string): unknown {
  try {
    return JSON.parse(cell);
  } catch {
    return cell;
  }
}
