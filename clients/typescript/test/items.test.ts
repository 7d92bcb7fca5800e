// The packing of items into UploadBatch messages and the client's own refusals: no
// service needed.

import assert from "node:assert/strict";
import { test } from "node:test";

import { BatchdClient, BatchdError, Code, codeName, toItem } from "../src/index.js";
import { FIRST_EARLY_MESSAGE_ITEMS, UploadPacker, uploadRequests } from "../src/items.js";
import { UploadBatchHeaderSchema } from "../src/gen/batchd/v1/batch_service_pb.js";
import { create } from "@bufbuild/protobuf";

async function* generated(n: number) {
  for (let i = 0; i < n; i++) {
    yield { customId: `g${i}`, params: { i } };
  }
}

test("an upload is a header, messages of at most 1,000 items, and an end with the count", async () => {
  const parts: string[] = [];
  const header = create(UploadBatchHeaderSchema, { handler: "noop" });
  for await (const message of uploadRequests(header, generated(2500), new UploadPacker())) {
    const part = message.part;
    parts.push(
      part.case === "items"
        ? `items:${part.value.items.length}`
        : part.case === "end"
          ? `end:${part.value.itemCount}`
          : String(part.case),
    );
  }
  assert.deepEqual(parts, ["header", "items:1000", "items:1000", "items:500", "end:2500"]);
});

test("an upload that starts early sends a chunk's worth first, then full messages", async () => {
  const parts: number[] = [];
  const header = create(UploadBatchHeaderSchema, { handler: "noop", startEarly: true });
  const packer = new UploadPacker(1000, undefined, false, FIRST_EARLY_MESSAGE_ITEMS);
  for await (const message of uploadRequests(header, generated(2500), packer)) {
    if (message.part.case === "items") {
      parts.push(message.part.value.items.length);
    }
  }
  assert.deepEqual(parts, [100, 1000, 1000, 400]);
  assert.throws(() => new UploadPacker(1000, undefined, false, 0), RangeError);
});

test("a message is cut at max_message_bytes before it reaches the item count", () => {
  const packer = new UploadPacker(1000, 100);
  const sizes: number[] = [];
  for (let i = 0; i < 10; i++) {
    const full = packer.add([`x${i}`, { pad: "p".repeat(30) }]);
    if (full?.part.case === "items") {
      sizes.push(full.part.value.items.length);
    }
  }
  assert.ok(sizes.length >= 4, `messages of ${JSON.stringify(sizes)}`);
  assert.ok(sizes.every((n) => n >= 1 && n <= 2));
});

test("params travel as compact JSON bytes unless a Struct is asked for", () => {
  const item = toItem({ customId: "a", params: { n: 1, s: "é" } }, 0);
  assert.equal(item.payload.case, "paramsJson");
  assert.equal(new TextDecoder().decode(item.payload.value as Uint8Array), '{"n":1,"s":"é"}');
  const struct = toItem(["b", { n: 1 }], 0, true);
  assert.equal(struct.payload.case, "params");
  assert.deepEqual(struct.payload.value, { n: 1 });
  assert.equal(toItem(["c"], 0).payload.value?.toString(), new TextEncoder().encode("{}").toString());
});

test("an item the service would refuse is refused here, naming it", () => {
  assert.throws(
    () => toItem({ customId: "a", params: [1, 2] } as never, 7),
    (error: unknown) =>
      error instanceof BatchdError &&
      error.code === Code.InvalidArgument &&
      error.fieldViolations[0]?.field === "items[7].params",
  );
  assert.throws(
    () => toItem({ customId: 3 } as never, 2),
    (error: unknown) =>
      error instanceof BatchdError && error.fieldViolations[0]?.field === "items[2].custom_id",
  );
});

test("code names are the gRPC ones", () => {
  assert.equal(codeName(Code.InvalidArgument), "INVALID_ARGUMENT");
  assert.equal(codeName(Code.NotFound), "NOT_FOUND");
  assert.equal(codeName(Code.Unavailable), "UNAVAILABLE");
});

test("an item over 4 MiB, or a submit over what the service reads, is refused before sending", async () => {
  const big = new TextEncoder().encode(JSON.stringify({ pad: "x".repeat(4 * 1024 * 1024) }));
  assert.throws(
    () => new UploadPacker().add(["huge", big]),
    (error: unknown) =>
      error instanceof BatchdError &&
      error.fieldViolations[0]?.field === "items[0]" &&
      /over the limit of 4194304 bytes/.test(error.fieldViolations[0].description),
  );
  // No server listens there: the refusal comes before any call.
  const client = new BatchdClient("127.0.0.1:9");
  const half = new TextEncoder().encode(JSON.stringify({ pad: "x".repeat(3 * 1024 * 1024) }));
  await assert.rejects(
    client.submit("noop", [
      ["a", half],
      ["b", half],
    ]),
    (error: unknown) =>
      error instanceof BatchdError &&
      error.code === Code.InvalidArgument &&
      /upload\(\) them/.test(error.message),
  );
});
