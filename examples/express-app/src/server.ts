/**
 * Runs the app: `node dist/src/server.js`. It reads BATCHD_TARGET (default
 * localhost:50051) and BATCHD_TOKEN, as the `batchd` CLI does, and PORT (default 8000).
 */

import { BatchdClient } from "@batchd/client";

import { createApp } from "./app.js";

const target = process.env["BATCHD_TARGET"] || "localhost:50051";
const token = process.env["BATCHD_TOKEN"] || undefined;
const port = Number(process.env["PORT"] || 8000);

const client = new BatchdClient(target, token === undefined ? {} : { token });
const server = createApp(client).listen(port, () => {
  console.log(`listening on http://localhost:${port}/ in front of batchd at ${target}`);
});
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => server.close());
}
