/**
 * A typed client of batchd.v1.BatchService: `BatchdClient`, its one error type
 * `BatchdError`, and the generated messages and enums it returns.
 */

export {
  BatchdClient,
  type BatchOptions,
  type BatchUpdate,
  type ClientOptions,
  DEFAULT_TARGET,
  type ExportOptions,
  DEFAULT_TIMEOUT_MS,
  type Page,
  type PageOptions,
  type SubmitOptions,
  type SubmitResult,
  type UploadOptions,
  type WatchOptions,
} from "./client.js";
export {
  BatchdError,
  Code,
  codeName,
  type FieldViolation,
  type QuotaViolation,
} from "./errors.js";
export {
  DEFAULT_ITEMS_PER_MESSAGE,
  DEFAULT_MAX_MESSAGE_BYTES,
  type ItemLike,
  MAX_ITEM_BYTES,
  MAX_REQUEST_BYTES,
  type Params,
  toItem,
} from "./items.js";
export { type WatchBatchesOptions } from "./events.js";
export {
  DEFAULT_WATCH_RETRY,
  isTerminal,
  type WatchReconnect,
  type WatchRetry,
  type WatchSnapshot,
} from "./watch.js";
export {
  type Batch,
  type BatchItem,
  type BatchProgress,
  BatchState,
  type HandlerInfo,
  type Item,
  type ItemCounts,
  ItemState,
} from "./gen/batchd/v1/batch_pb.js";
export {
  type BatchEvent,
  BatchEventType,
  type ExportBatchResultsResponse,
  ExportOrder,
} from "./gen/batchd/v1/batch_service_pb.js";
