import { BatchdClient, BatchdError, BatchState, codeName, ItemState } from "@batchd/client";

const client = new BatchdClient(process.env["BATCHD_TARGET"] ?? "localhost:50051");

// Any (async) iterable: items are streamed through UploadBatch, never held in memory whole.
async function* items() {
  for (let i = 0; i < 5_000; i++) {
    yield { customId: `user-${i}`, params: { seconds: 0.001, fail: i === 7 } };
  }
}
const { batch } = await client.upload("sleep", items(), { options: { chunkSize: 500 } });
for await (const { progress } of client.watch(batch.batchId)) {  // reconnects by itself
  const counts = progress.counts;
  console.log(BatchState[progress.state], `succeeded=${counts?.succeeded} failed=${counts?.failed}`);
}

for await (const item of client.items(batch.batchId, { states: [ItemState.FAILED] })) {
  console.log(item.customId, codeName(item.error?.code ?? 0), item.error?.message);
}

try {
  await client.submit("sleep", [["bad", { seconds: -1 }]]);
} catch (error) {
  if (!(error instanceof BatchdError)) throw error;
  // One error type: code, message, and the field violations the service sent.
  console.log(error.codeName, error.fieldViolations.map((v) => v.field).join(", "));
}
