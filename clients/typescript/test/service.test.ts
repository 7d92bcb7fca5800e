// The client against a real batchd server and worker, at BATCHD_TARGET (host:port):
// tests/client/test_typescript_client.py starts them and runs these tests.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import net from "node:net";
import { after, before, describe, test } from "node:test";

import {
  type Batch,
  BatchdClient,
  BatchdError,
  type BatchEvent,
  BatchEventType,
  BatchState,
  Code,
  ExportOrder,
  type ItemLike,
  ItemState,
  type WatchReconnect,
  type WatchSnapshot,
} from "../src/index.js";

const target = process.env["BATCHD_TARGET"];
const skip = target === undefined ? "BATCHD_TARGET (host:port of a batchd server) is not set" : false;

async function watchToEnd(client: BatchdClient, batchId: string): Promise<WatchSnapshot[]> {
  const seen: WatchSnapshot[] = [];
  for await (const snapshot of client.watch(batchId, { minIntervalMs: 20 })) {
    seen.push(snapshot);
  }
  return seen;
}

async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const value of iterable) {
    all.push(value);
  }
  return all;
}

async function rejectsWith(promise: Promise<unknown>, code: Code): Promise<BatchdError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof BatchdError, `not a BatchdError: ${String(error)}`);
    assert.equal(error.code, code, error.toString());
    return error;
  }
  assert.fail(`no ${Code[code]} error`);
}

describe("BatchdClient against batchd", { skip }, () => {
  let client: BatchdClient;
  before(() => {
    client = new BatchdClient(target, { timeoutMs: 10_000 });
  });

  test("watchBatches yields a labelled batch's events in order, and resumes after a cursor", async () => {
    const run = randomUUID();
    const stream = client.watchBatches({ labels: { run }, heartbeats: true });
    const start = await stream.next(); // the stream's first message: where it starts
    assert.equal(start.value?.type, BatchEventType.UNSPECIFIED);
    const { batch } = await client.submit("noop", [["e1", {}], ["e2", {}]], { metadata: { run } });
    const seen: BatchEvent[] = [];
    while (seen.length < 3) {
      const next = await stream.next();
      assert.ok(next.value !== undefined);
      if (next.value.type !== BatchEventType.UNSPECIFIED) {
        seen.push(next.value);
      }
    }
    await stream.return(undefined);
    assert.deepEqual(
      seen.map((e) => [e.batchId, e.type, e.state, e.metadata["run"]]),
      [
        [batch.batchId, BatchEventType.CREATED, BatchState.QUEUED, run],
        [batch.batchId, BatchEventType.STARTED, BatchState.RUNNING, run],
        [batch.batchId, BatchEventType.FINISHED, BatchState.COMPLETED, run],
      ],
    );
    assert.equal(seen[2]?.counts?.succeeded, 2n);

    const resumed: BatchEvent[] = [];
    for await (const event of client.watchBatches({ labels: { run }, cursor: seen[0]?.cursor })) {
      resumed.push(event);
      if (resumed.length === 2) {
        break;
      }
    }
    assert.deepEqual(
      resumed.map((e) => e.cursor),
      seen.slice(1).map((e) => e.cursor),
    );
    await rejectsWith(collect(client.watchBatches({ cursor: "nope" })), Code.InvalidArgument);
  });

  test("submit, get, and watch to the terminal snapshot", async () => {
    const items: ItemLike[] = Array.from({ length: 20 }, (_, i) => ({
      customId: `s${i}`,
      params: { seconds: 0.001 },
    }));
    const submitted = await client.submit("sleep", items, {
      options: { chunkSize: 5 },
      metadata: { suite: "typescript" },
    });
    assert.equal(submitted.replayed, false);
    assert.equal(submitted.batch.totalItems, 20n);
    assert.equal(submitted.batch.options?.chunkSize, 5);
    const batchId = submitted.batch.batchId;

    const snapshots = await watchToEnd(client, batchId);
    const last = snapshots.at(-1);
    assert.ok(last?.terminal);
    assert.equal(last.progress.state, BatchState.COMPLETED);
    assert.equal(last.progress.counts?.succeeded, 20n);
    assert.equal(snapshots.filter((s) => s.terminal).length, 1);

    const batch = await client.get(batchId);
    assert.equal(batch.state, BatchState.COMPLETED);
    assert.deepEqual(batch.metadata, { suite: "typescript" });
    assert.ok(batch.endTime !== undefined);
  });

  test("a request_id makes a submit safe to repeat", async () => {
    const requestId = randomUUID();
    const first = await client.submit("noop", [["r1", {}]], { requestId });
    const again = await client.submit("noop", [["r1", {}]], { requestId });
    assert.equal(again.replayed, true);
    assert.equal(again.batch.batchId, first.batch.batchId);
  });

  test("upload streams 2,500 items from an async generator", async () => {
    let pulled = 0;
    async function* items() {
      for (let i = 0; i < 2500; i++) {
        pulled += 1;
        yield { customId: `u${i}`, params: { i } };
      }
    }
    const uploaded = await client.upload("noop", items(), { options: { chunkSize: 500 } });
    assert.equal(pulled, 2500);
    assert.equal(uploaded.batch.totalItems, 2500n);
    assert.equal(uploaded.batch.chunkCount, 5);
    const last = (await watchToEnd(client, uploaded.batch.batchId)).at(-1);
    assert.equal(last?.progress.state, BatchState.COMPLETED);
    assert.equal(last.progress.counts?.succeeded, 2500n);
    const outcomes = await collect(client.items(uploaded.batch.batchId, { pageSize: 1000 }));
    assert.equal(outcomes.length, 2500);
    assert.deepEqual(
      outcomes.slice(0, 3).map((item) => [item.customId, item.index]),
      [
        ["u0", 0n],
        ["u1", 1n],
        ["u2", 2n],
      ],
    );
  });

  test("an upload whose items throw is abandoned and the error propagates unchanged", async () => {
    const batchId = `ts-abandoned-${randomUUID().slice(0, 8)}`;
    const broken = new Error("the source broke");
    async function* items() {
      for (let i = 0; i < 1500; i++) {
        yield { customId: `a${i}`, params: {} };
      }
      throw broken;
    }
    await assert.rejects(client.upload("noop", items(), { batchId }), (error) => error === broken);
    await rejectsWith(client.get(batchId), Code.NotFound);
  });

  test("an upload that starts early runs its items and ends uploading", async () => {
    const items = Array.from({ length: 250 }, (_, i) => ({ customId: `e${i}`, params: {} }));
    const uploaded = await client.upload("noop", items, {
      startEarly: true,
      options: { chunkSize: 100 },
    });
    assert.equal(uploaded.batch.totalItems, 250n);
    assert.equal(uploaded.batch.uploading, false);
    const last = (await watchToEnd(client, uploaded.batch.batchId)).at(-1);
    assert.equal(last?.progress.state, BatchState.COMPLETED);
    assert.equal(last.progress.counts?.succeeded, 250n);
    async function* unsized() {
      yield { customId: "x", params: {} };
    }
    await assert.rejects(client.upload("noop", unsized(), { startEarly: true }), /itemCount/);
  });

  test("an upload the service refuses mid-stream fails with the service's status", async () => {
    async function* items() {
      for (let i = 0; i < 3000; i++) {
        yield { customId: i === 150 ? "d3" : `d${i}`, params: {} };
      }
    }
    const error = await rejectsWith(
      client.upload("noop", items(), { options: { chunkSize: 100 }, itemsPerMessage: 50 }),
      Code.InvalidArgument,
    );
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ["items[150].custom_id"],
    );
    assert.match(error.fieldViolations[0]?.description ?? "", /already used by items\[3\]/);
  });

  test("RESOURCE_EXHAUSTED carries the quota and when to retry", async () => {
    // The harness's server holds at most 3,000 items per batch (max_batch_items).
    async function* items() {
      for (let i = 0; i < 3001; i++) {
        yield { customId: `q${i}`, params: {} };
      }
    }
    const error = await rejectsWith(client.upload("noop", items()), Code.ResourceExhausted);
    assert.deepEqual(
      error.quotaViolations.map((v) => v.subject),
      ["max_batch_items"],
    );
    assert.match(error.quotaViolations[0]?.description ?? "", /at most 3000/);
    assert.ok((error.retryAfterMs ?? 0) > 0, `retryAfterMs ${error.retryAfterMs}`);
  });

  test("pause, update, resume, retry, delete and handlers", async () => {
    const handlers = (await client.handlers()).map((h) => h.name);
    assert.ok(handlers.includes("sleep") && handlers.includes("noop"), handlers.join(", "));

    const items: ItemLike[] = [
      ["p0", { seconds: 0.5 }],
      ["p1", { seconds: 0, fail: true }],
    ];
    const { batch } = await client.submit("sleep", items, {
      options: { retryPolicy: { maxAttempts: 1 }, maxConcurrent: 1 },
    });
    assert.equal((await client.pause(batch.batchId)).state, BatchState.PAUSED);
    assert.equal((await client.pause(batch.batchId)).state, BatchState.PAUSED); // idempotent
    const updated = await client.update(batch.batchId, { maxConcurrent: 3, priority: 5 });
    assert.equal(updated.options?.maxConcurrent, 3);
    assert.equal(updated.options?.priority, 5);
    assert.equal(updated.options?.retryPolicy?.maxAttempts, 1); // kept
    await rejectsWith(client.update(batch.batchId, {}), Code.InvalidArgument);
    const resumed = await client.resume(batch.batchId);
    assert.ok([BatchState.QUEUED, BatchState.RUNNING].includes(resumed.state));
    await watchToEnd(client, batch.batchId);
    const retried = await client.retry(batch.batchId);
    assert.equal(retried.requeued, 1n);
    assert.equal(retried.replayed, false);
    const last = (await watchToEnd(client, batch.batchId)).at(-1);
    assert.equal(last?.progress.counts?.failed, 1n);
    const [failed] = await collect(client.items(batch.batchId, { states: [ItemState.FAILED] }));
    assert.equal(failed?.customId, "p1");
    assert.equal(failed.attempts, 1);

    await client.delete(batch.batchId);
    await rejectsWith(client.get(batch.batchId), Code.NotFound);
  });

  test("a watch stops when its signal is aborted", async () => {
    const items: ItemLike[] = Array.from({ length: 20 }, (_, i) => [`a${i}`, { seconds: 0.2 }]);
    const { batch } = await client.submit("sleep", items, { options: { maxConcurrent: 1 } });
    const controller = new AbortController();
    const reason = new Error("enough");
    const seen: WatchSnapshot[] = [];
    await assert.rejects(
      (async () => {
        for await (const snapshot of client.watch(batch.batchId, { signal: controller.signal })) {
          seen.push(snapshot);
          controller.abort(reason);
        }
      })(),
      (error) => error === reason,
    );
    assert.equal(seen.length, 1);
    await client.cancel(batch.batchId);
  });

  test("list pages through batches, newest first", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      ids.push((await client.submit("noop", [["x", {}]])).batch.batchId);
    }
    const first = await client.listPage({ pageSize: 2 });
    assert.equal(first.items.length, 2);
    assert.notEqual(first.nextPageToken, "");
    assert.deepEqual(
      first.items.map((b) => b.batchId),
      [ids[2], ids[1]],
    );
    const all: Batch[] = await collect(client.list({ pageSize: 2 }));
    const listed = all.map((b) => b.batchId);
    assert.equal(new Set(listed).size, listed.length, "a batch listed twice");
    const ours = listed.filter((id) => ids.includes(id));
    assert.deepEqual(ours, [...ids].reverse());
    const created = all.map((b) => b.createTime?.seconds ?? 0n);
    assert.deepEqual(created, [...created].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0)));
  });

  test("items page through the outcomes, with a failed item's error", async () => {
    const items: ItemLike[] = [
      ["ok-0", { seconds: 0 }],
      ["ok-1", { seconds: 0 }],
      ["bad", { seconds: 0, fail: true }],
      ["ok-3", { seconds: 0 }],
      ["ok-4", { seconds: 0 }],
    ];
    const { batch } = await client.submit("sleep", items, {
      options: { retryPolicy: { maxAttempts: 1 } },
    });
    const last = (await watchToEnd(client, batch.batchId)).at(-1);
    assert.equal(last?.progress.state, BatchState.COMPLETED);
    assert.equal(last.progress.counts?.failed, 1n);

    const page = await client.itemsPage(batch.batchId, { pageSize: 2 });
    assert.deepEqual(
      page.items.map((i) => i.customId),
      ["ok-0", "ok-1"],
    );
    assert.notEqual(page.nextPageToken, "");
    const all = await collect(client.items(batch.batchId, { pageSize: 2 }));
    assert.deepEqual(
      all.map((i) => i.customId),
      ["ok-0", "ok-1", "bad", "ok-3", "ok-4"],
    );
    const failed = all[2];
    assert.equal(failed?.state, ItemState.FAILED);
    assert.equal(failed.error?.code, Code.Aborted);
    assert.match(failed.error?.message ?? "", /failed as asked/);
    assert.equal(all[0]?.state, ItemState.SUCCEEDED);
    assert.deepEqual(all[0]?.output, { slept: 0 });

    const onlyFailed = await collect(client.items(batch.batchId, { states: [ItemState.FAILED] }));
    assert.deepEqual(
      onlyFailed.map((i) => i.customId),
      ["bad"],
    );
  });

  test("export results: JSON Lines by custom_id, and carrying on after a cursor", async () => {
    // By custom_id, pages of 2,000 lines: two here.
    const items: ItemLike[] = Array.from({ length: 2500 }, (_, i) => [
      `e${String(2499 - i).padStart(4, "0")}`,
      { seconds: 0, fail: i === 1 },
    ]);
    const { batch } = await client.submit("sleep", items, {
      options: { chunkSize: 500, retryPolicy: { maxAttempts: 1 } },
    });
    await rejectsWith(collect(client.exportResults(batch.batchId)), Code.FailedPrecondition);
    await watchToEnd(client, batch.batchId);

    const pages = await collect(client.exportResults(batch.batchId, { order: ExportOrder.CUSTOM_ID }));
    assert.ok(pages.length >= 2, `${pages.length} pages`);
    const decoder = new TextDecoder();
    const lines = pages.flatMap((page) => decoder.decode(page.lines).split("\n").slice(0, -1));
    assert.equal(lines.length, 2500);
    assert.equal(pages.at(-1)?.position, 2500n);
    assert.equal(pages.at(-1)?.totalItems, 2500n);
    const rows = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    assert.deepEqual(
      rows.slice(0, 2).map((row) => row["custom_id"]),
      ["e0000", "e0001"],
    );
    const failed = rows.find((row) => row["state"] === "FAILED");
    assert.equal(failed?.["custom_id"], "e2498");
    assert.equal((failed?.["error"] as { code: string }).code, "ABORTED");

    const [first] = pages;
    const rest = await collect(
      client.exportResults(batch.batchId, { order: ExportOrder.CUSTOM_ID, after: first?.cursor }),
    );
    assert.equal(rest.length, pages.length - 1);
    assert.deepEqual(rest.at(0)?.lines, pages.at(1)?.lines);
  });

  test("cancel: pending items become CANCELLED, and again is the same", async () => {
    // At most 2 items at a time, each 0.2 s: the batch is far from done when cancelled.
    const items: ItemLike[] = Array.from({ length: 1000 }, (_, i) => [`c${i}`, { seconds: 0.2 }]);
    const { batch } = await client.submit("sleep", items, {
      options: { chunkSize: 20, maxConcurrent: 2 },
    });
    const cancelled = await client.cancel(batch.batchId);
    assert.ok(
      [BatchState.CANCELLING, BatchState.CANCELLED].includes(cancelled.state),
      BatchState[cancelled.state],
    );
    const again = await client.cancel(batch.batchId);
    assert.ok([BatchState.CANCELLING, BatchState.CANCELLED].includes(again.state));
    const last = (await watchToEnd(client, batch.batchId)).at(-1);
    assert.equal(last?.progress.state, BatchState.CANCELLED);
    const counts = last.progress.counts;
    assert.ok((counts?.cancelled ?? 0n) > 0n);
    assert.equal(counts?.pending, 0n);
    assert.equal(counts?.running, 0n);
  });

  test("INVALID_ARGUMENT carries the field violations", async () => {
    const error = await rejectsWith(
      client.submit("sleep", [
        ["fine", { seconds: 0 }],
        ["negative", { seconds: -1 }],
      ]),
      Code.InvalidArgument,
    );
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ["items[1].params.seconds"],
    );
    assert.match(error.fieldViolations[0]?.description ?? "", /bigger than or equal to 0/);
    assert.match(error.toString(), /items\[1\]\.params\.seconds/);
  });

  test("an unknown handler names the field", async () => {
    const error = await rejectsWith(client.submit("no.such.handler", [["a", {}]]), Code.InvalidArgument);
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ["handler"],
    );
  });

  test("NOT_FOUND for a batch that does not exist", async () => {
    const error = await rejectsWith(client.get("no-such-batch"), Code.NotFound);
    assert.match(error.message, /no-such-batch/);
    await rejectsWith(client.cancel("no-such-batch"), Code.NotFound);
    await rejectsWith(collect(client.watch("no-such-batch")), Code.NotFound);
  });
});

/** A TCP proxy to `upstream` whose connections can all be cut at once, and which can
 * drop the next connections it accepts. */
async function cuttableProxy(upstream: string) {
  const colon = upstream.lastIndexOf(":");
  const [host, port] = [upstream.slice(0, colon), Number(upstream.slice(colon + 1))];
  const sockets = new Set<net.Socket>();
  let toDrop = 0;
  let accepted = 0;
  const server = net.createServer((downstream) => {
    accepted += 1;
    if (toDrop > 0) {
      toDrop -= 1;
      downstream.destroy();
      return;
    }
    const up = net.connect(port, host);
    for (const socket of [downstream, up]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => socket.destroy());
    }
    downstream.pipe(up).pipe(downstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address() as net.AddressInfo;
  return {
    target: `127.0.0.1:${address.port}`,
    cut: () => {
      for (const socket of sockets) {
        socket.destroy();
      }
    },
    dropNext: (n: number) => {
      toDrop = n;
    },
    accepted: () => accepted,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe("through a connection that goes away", { skip }, () => {
  let proxy: Awaited<ReturnType<typeof cuttableProxy>>;
  before(async () => {
    proxy = await cuttableProxy(target ?? "");
  });
  after(async () => {
    proxy.cut();
    await proxy.close();
  });

  test("a watch reconnects, and carries on to the terminal snapshot", async () => {
    const direct = new BatchdClient(target);
    const items: ItemLike[] = Array.from({ length: 40 }, (_, i) => [`w${i}`, { seconds: 0.05 }]);
    const { batch } = await direct.submit("sleep", items, { options: { maxConcurrent: 2 } });

    const viaProxy = new BatchdClient(proxy.target);
    const reconnects: WatchReconnect[] = [];
    const snapshots: WatchSnapshot[] = [];
    for await (const snapshot of viaProxy.watch(batch.batchId, {
      minIntervalMs: 20,
      retry: { initialBackoffMs: 20 },
      onReconnect: (r) => reconnects.push(r),
    })) {
      snapshots.push(snapshot);
      if (snapshots.length === 1) {
        proxy.cut();
      }
    }
    assert.ok(reconnects.length >= 1, "no reconnect");
    assert.equal(reconnects[0]?.error.code, Code.Unavailable, reconnects[0]?.error.toString());
    assert.equal(reconnects[0]?.attempt, 1);
    assert.equal(snapshots.at(-1)?.progress.state, BatchState.COMPLETED);
    assert.equal(snapshots.at(-1)?.progress.counts?.succeeded, 40n);
  });

  test("reads, and submits with a request_id, are sent again; other submits are not", async () => {
    const client = new BatchdClient(proxy.target);
    const { batch } = await client.submit("noop", [["x", {}]], { requestId: randomUUID() });
    proxy.cut();

    let before = proxy.accepted();
    proxy.dropNext(1);
    assert.equal((await client.get(batch.batchId)).batchId, batch.batchId);
    assert.equal(proxy.accepted() - before, 2, "the get was not sent again");
    proxy.cut();

    before = proxy.accepted();
    proxy.dropNext(1);
    const requestId = randomUUID();
    const again = await client.submit("noop", [["y", {}]], { requestId });
    assert.equal(again.replayed, false);
    assert.equal(proxy.accepted() - before, 2);
    proxy.cut();

    proxy.dropNext(1);
    await rejectsWith(client.submit("noop", [["z", {}]]), Code.Unavailable);
  });
});
