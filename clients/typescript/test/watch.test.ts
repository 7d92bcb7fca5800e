// How a watch ends its stream, against a real gRPC server (connect-node's, on a free
// port) that answers WatchProgress as a script says: no batchd service needed.

import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { create } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import { BatchdClient, BatchState } from "../src/index.js";
import { BatchService, WatchProgressResponseSchema } from "../src/gen/batchd/v1/batch_service_pb.js";

test("after the terminal snapshot a watch lets the service end the stream", async () => {
  let ended: (how: string) => void = () => undefined;
  const end = new Promise<string>((resolve) => {
    ended = resolve;
  });
  const handler = connectNodeAdapter({
    routes(router) {
      router.service(BatchService, {
        async *watchProgress(_request, context) {
          yield create(WatchProgressResponseSchema, {
            progress: { batchId: "b1", state: BatchState.COMPLETED, totalItems: 1n },
          });
          // A service that takes a moment to close the stream after its last snapshot.
          await sleep(200);
          ended(context.signal.aborted ? "aborted" : "closed");
        },
      });
    },
  });
  const server = http2.createServer(handler);
  const sessions: http2.ServerHttp2Session[] = [];
  server.on("session", (session: http2.ServerHttp2Session) => sessions.push(session));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  try {
    const client = new BatchdClient(`127.0.0.1:${port}`);
    const states: BatchState[] = [];
    for await (const snapshot of client.watch("b1")) {
      states.push(snapshot.progress.state);
    }
    assert.deepEqual(states, [BatchState.COMPLETED]);
    assert.equal(await end, "closed");
  } finally {
    // The client keeps its connection: close it from this side, so the process can end.
    for (const session of sessions) {
      session.destroy();
    }
    server.close();
  }
});
