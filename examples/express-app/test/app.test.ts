// The app on a free port in front of a real batchd server and worker at BATCHD_TARGET
// (host:port), over HTTP: tests/e2e/test_express_example.py starts batchd and runs these.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";

import { BatchdClient } from "@batchd/client";

import { createApp } from "../src/app.js";

const target = process.env["BATCHD_TARGET"];
const skip = target === undefined ? "BATCHD_TARGET (host:port of a batchd server) is not set" : false;

// The harness's server holds at most this many items per batch (max_batch_items).
const MAX_BATCH_ITEMS = 1000;

// Answers as parsed: the tests index into them freely.
type Json = Record<string, any>;

/** The events of a server-sent event stream, read to its end: each `data:` as JSON. */
async function readEvents(response: Response): Promise<Json[]> {
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/event-stream");
  const text = await response.text(); // the app ends the stream after the terminal event
  return text
    .split("\n\n")
    .filter((event) => event.trim() !== "")
    .map((event) => {
      assert.match(event, /^data: /);
      return JSON.parse(event.slice("data: ".length)) as Json;
    });
}

describe("the Express app in front of batchd", { skip }, () => {
  let server: Server;
  let base: string;

  before(async () => {
    const app = createApp(new BatchdClient(target, { timeoutMs: 10_000 }));
    server = await new Promise<Server>((resolve) => {
      const listening = app.listen(0, "127.0.0.1", () => resolve(listening));
    });
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  async function upload(
    body: string,
    type: string,
    headers: Record<string, string> = {},
    handler = "sleep",
  ) {
    return fetch(`${base}/batches?handler=${handler}`, {
      method: "POST",
      body,
      headers: { "Content-Type": type, ...headers },
    });
  }

  /** Follows the batch's events to the end, then downloads its results. */
  async function finish(batchId: string): Promise<{ events: Json[]; results: Json[] }> {
    const events = await readEvents(await fetch(`${base}/batches/${batchId}/events`));
    const response = await fetch(`${base}/batches/${batchId}/results`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-type"), "application/x-ndjson");
    const text = await response.text();
    assert.ok(text.endsWith("\n"), text);
    const results = text
      .trimEnd()
      .split("\n")
      .map((line) => JSON.parse(line) as Json);
    return { events, results };
  }

  test("a CSV upload becomes a batch; its events end at the terminal one", async () => {
    const csv = 'custom_id,seconds\r\n"a",0.01\r\nb,"0.02"\r\n';
    const response = await upload(csv, "text/csv");
    assert.equal(response.status, 201, await response.clone().text());
    const batch = (await response.json()) as Json;
    assert.equal(response.headers.get("location"), `/batches/${batch["batch_id"]}`);
    assert.equal(batch["handler"], "sleep");
    assert.equal(batch["total_items"], 2);

    const { events, results } = await finish(batch["batch_id"]);
    const last = events.at(-1);
    assert.equal(last?.["state"], "COMPLETED");
    assert.equal(last?.["terminal"], true);
    assert.equal(last?.["counts"]["succeeded"], 2);
    assert.equal(last?.["fraction"], 1);
    assert.equal(events.filter((event) => event["terminal"]).length, 1);
    assert.deepEqual(
      results.map((line) => line["custom_id"]),
      ["a", "b"],
    );

    const status = await fetch(`${base}/batches/${batch["batch_id"]}`);
    assert.equal(status.status, 200);
    const done = (await status.json()) as Json;
    assert.equal(done["state"], "COMPLETED");
    assert.equal(done["terminal"], true);
    assert.ok(done["end_time"]);
  });

  test("a JSON Lines upload, custom_ids given or from the line", async () => {
    const jsonl =
      '{"custom_id": "x", "params": {"n": 1}}\n' + '{"params": {"n": 2}}\n' + "{}\n\n\n";
    const response = await upload(jsonl, "application/x-ndjson", {}, "noop");
    assert.equal(response.status, 201, await response.clone().text());
    const batch = (await response.json()) as Json;
    assert.equal(batch["total_items"], 3);
    const { results } = await finish(batch["batch_id"]);
    assert.deepEqual(
      results.map((line) => [line["custom_id"], line["state"]]),
      [
        ["x", "SUCCEEDED"],
        ["line-2", "SUCCEEDED"],
        ["line-3", "SUCCEEDED"],
      ],
    );
  });

  test("an Idempotency-Key makes a repeat answer with the first batch", async () => {
    const key = { "Idempotency-Key": randomUUID() };
    const first = await upload("seconds\n0.001\n", "text/csv", key);
    const again = await upload("seconds\n0.001\n", "text/csv", key);
    assert.equal(first.status, 201);
    assert.equal(again.status, 200);
    const [one, two] = [(await first.json()) as Json, (await again.json()) as Json];
    assert.equal(two["batch_id"], one["batch_id"]);
  });

  test("a row batchd refuses is a 422 naming its line", async () => {
    const response = await upload("custom_id,seconds\na,0.01\nb,-1\n", "text/csv");
    assert.equal(response.status, 422);
    const body = (await response.json()) as Json;
    assert.equal(body["violations"][0]["field"], "items[1].params.seconds");
    assert.equal(body["violations"][0]["line"], 3);
  });

  test("a line that is no item is a 422 naming its line", async () => {
    const response = await upload('{"custom_id": "a"}\n{not json\n', "application/x-ndjson");
    assert.equal(response.status, 422);
    const body = (await response.json()) as Json;
    assert.equal(body["violations"][0]["line"], 2);
    assert.match(body["detail"], /^line 2: not valid JSON/);

    const csv = await upload("a,b\n1,2\n3\n", "text/csv");
    assert.equal(csv.status, 422);
    assert.deepEqual(((await csv.json()) as Json)["violations"], [
      { field: "", line: 3, description: "1 cells for 2 columns" },
    ]);

    const blank = await upload("a\n1\n\n2\n", "text/csv");
    assert.equal(blank.status, 422);
    assert.equal(((await blank.json()) as Json)["violations"][0]["line"], 3);
  });

  test("an upload of another media type is a 415", async () => {
    const response = await upload("{}", "application/json");
    assert.equal(response.status, 415);
  });

  test("an unknown batch is a 404 everywhere", async () => {
    for (const path of ["", "/events", "/results"]) {
      const response = await fetch(`${base}/batches/no-such-batch${path}`);
      assert.equal(response.status, 404, path);
      assert.ok(((await response.json()) as Json)["detail"], path);
    }
  });

  test("a batch over the limit is a 429 with Retry-After", async () => {
    const lines = ["custom_id"];
    for (let i = 0; i <= MAX_BATCH_ITEMS; i++) {
      lines.push(`q${i}`);
    }
    const response = await upload(lines.join("\n") + "\n", "text/csv", {}, "noop");
    assert.equal(response.status, 429);
    assert.ok(Number(response.headers.get("retry-after")) >= 1);
    const body = (await response.json()) as Json;
    assert.equal(body["violations"][0]["field"], "max_batch_items");
  });
});
