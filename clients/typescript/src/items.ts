/**
 * Items: what callers pass, and how they become batchd.v1.Items and UploadBatch messages.
 *
 * An item is `{ customId, params }` (params optional), a tuple `[customId, params]`, or a
 * generated `Item`, sent as it is. Params are a JSON object, or a Uint8Array already
 * holding its UTF-8 JSON (passed through untouched). They travel as `params_json`,
 * compact JSON bytes, unless `paramsStruct` asks for a google.protobuf.Struct.
 */

import { create, fromJson, isMessage, type JsonObject } from "@bufbuild/protobuf";
import { StructSchema } from "@bufbuild/protobuf/wkt";

import { type Item, ItemSchema } from "./gen/batchd/v1/batch_pb.js";
import {
  type UploadBatchHeader,
  type UploadBatchRequest,
  UploadBatchHeaderSchema,
  UploadBatchRequestSchema,
} from "./gen/batchd/v1/batch_service_pb.js";
import { BatchdError } from "./errors.js";

/** An item's params: a JSON object, or its UTF-8 JSON encoding. */
export type Params = JsonObject | Uint8Array;

/** Anything `submit()` and `upload()` accept as an item. */
export type ItemLike =
  | { readonly customId: string; readonly params?: Params | undefined }
  | readonly [customId: string, params?: Params | undefined]
  | Item;

/** Items per UploadBatchItems message, at most. */
export const DEFAULT_ITEMS_PER_MESSAGE = 1000;
/** Bytes per UploadBatchItems message, at most (unless one item alone is larger):
 * servers accept 4 MiB messages by default; this stays well below. */
export const DEFAULT_MAX_MESSAGE_BYTES = 1 << 20;
/** The largest item, encoded, that the client sends: one item alone always fits in a
 * message of either SubmitBatch or UploadBatch. */
export const MAX_ITEM_BYTES = 4 * 1024 * 1024;
/** The largest message the service reads (its gRPC max receive message length): 4 MiB of
 * items and 64 KiB for the rest of a request. */
export const MAX_REQUEST_BYTES = 4 * 1024 * 1024 + 64 * 1024;

const encoder = new TextEncoder();
const EMPTY_OBJECT = encoder.encode("{}");

/** Converts one item; `index` (its position in the batch) names it in errors. Throws
 * BatchdError (INVALID_ARGUMENT) naming the field, e.g. `items[3].params`. */
export function toItem(item: ItemLike, index: number, paramsStruct = false): Item {
  if (isMessage(item, ItemSchema)) {
    return item;
  }
  let customId: unknown;
  let params: unknown;
  if (Array.isArray(item)) {
    if (item.length < 1 || item.length > 2) {
      throw BatchdError.invalidArgument(where(index), "a tuple item is [customId, params]");
    }
    [customId, params] = item as unknown[];
  } else if (typeof item === "object" && item !== null) {
    const unknownKeys = Object.keys(item).filter((k) => k !== "customId" && k !== "params");
    if (unknownKeys.length > 0) {
      throw BatchdError.invalidArgument(
        where(index),
        `unknown keys ${JSON.stringify(unknownKeys.sort())}; expected customId, params`,
      );
    }
    ({ customId, params } = item as { customId?: unknown; params?: unknown });
  } else {
    throw BatchdError.invalidArgument(
      where(index),
      `expected {customId, params}, a [customId, params] tuple or an Item, not ${typeof item}`,
    );
  }
  if (typeof customId !== "string") {
    throw BatchdError.invalidArgument(where(index, ".custom_id"), "must be a string");
  }
  if (paramsStruct) {
    return create(ItemSchema, {
      customId,
      payload: { case: "params", value: struct(params, index) },
    });
  }
  return create(ItemSchema, {
    customId,
    payload: { case: "paramsJson", value: json(params, index) },
  });
}

function where(index: number, field = ""): string {
  return `items[${index}]${field}`;
}

function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function json(params: unknown, index: number): Uint8Array {
  if (params instanceof Uint8Array) {
    return params;
  }
  if (params === undefined || params === null) {
    return EMPTY_OBJECT;
  }
  if (!isJsonObject(params)) {
    throw BatchdError.invalidArgument(where(index, ".params"), "must be a JSON object");
  }
  try {
    return encoder.encode(JSON.stringify(params));
  } catch (error) {
    throw BatchdError.invalidArgument(where(index, ".params"), `not JSON: ${String(error)}`);
  }
}

/** The params of a Struct item: protobuf-es represents a Struct as its JSON object. */
function struct(params: unknown, index: number): JsonObject {
  let value: unknown = params ?? {};
  if (value instanceof Uint8Array) {
    try {
      value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(value));
    } catch (error) {
      throw BatchdError.invalidArgument(where(index, ".params"), `not JSON: ${String(error)}`);
    }
  }
  if (!isJsonObject(value)) {
    throw BatchdError.invalidArgument(where(index, ".params"), "must be a JSON object");
  }
  try {
    fromJson(StructSchema, value); // throws for what a Struct cannot hold
    return value;
  } catch (error) {
    throw BatchdError.invalidArgument(where(index, ".params"), `not JSON: ${String(error)}`);
  }
}

/** The encoded size of an item, at least: its custom_id and params with their tags and
 * lengths. */
export function itemSize(item: Item): number {
  const id = encoder.encode(item.customId).length;
  let params = 0;
  if (item.payload.case === "paramsJson") {
    params = item.payload.value.length;
  } else if (item.payload.case === "params") {
    params = JSON.stringify(item.payload.value).length; // an estimate; Structs are rare
  }
  return id + params + 8;
}

/** The item's encoded size; throws BatchdError (INVALID_ARGUMENT) naming the item when
 * it is over MAX_ITEM_BYTES: the service would refuse its message whole. */
export function checkedSize(item: Item, index: number): number {
  const size = itemSize(item);
  if (size > MAX_ITEM_BYTES) {
    throw BatchdError.invalidArgument(
      where(index),
      `item ${JSON.stringify(item.customId)} is ${size} bytes encoded, over the limit of ` +
        `${MAX_ITEM_BYTES} bytes (4 MiB) per item`,
    );
  }
  return size;
}

/** An upload that starts early sends its first items in a message of a chunk's worth
 * (the service's default chunk size): they start running while the client packs the
 * rest. */
export const FIRST_EARLY_MESSAGE_ITEMS = 100;

/** Packs items into UploadBatchItems messages of at most `itemsPerMessage` items and
 * (unless one item alone is larger) `maxMessageBytes` bytes; the first message holds at
 * most `firstMessageItems`, if given, so that it goes out sooner. */
export class UploadPacker {
  /** Items packed so far. */
  count = 0;
  private pending: Item[] = [];
  private pendingBytes = 0;
  private perMessage: number;

  constructor(
    private readonly itemsPerMessage = DEFAULT_ITEMS_PER_MESSAGE,
    private readonly maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES,
    private readonly paramsStruct = false,
    firstMessageItems?: number,
  ) {
    if (!Number.isInteger(itemsPerMessage) || itemsPerMessage < 1) {
      throw new RangeError("itemsPerMessage must be an integer of at least 1");
    }
    const first = firstMessageItems;
    if (first !== undefined && (!Number.isInteger(first) || first < 1)) {
      throw new RangeError("firstMessageItems must be an integer of at least 1");
    }
    this.perMessage = Math.min(first ?? itemsPerMessage, itemsPerMessage);
  }

  /** Adds one item; returns a full message when there is one to send. */
  add(like: ItemLike): UploadBatchRequest | undefined {
    const index = this.count;
    const item = toItem(like, index, this.paramsStruct);
    this.count += 1;
    const size = checkedSize(item, index);
    let full: UploadBatchRequest | undefined;
    if (this.pending.length > 0 && this.pendingBytes + size + 5 > this.maxMessageBytes) {
      full = this.flush();
    }
    this.pending.push(item);
    this.pendingBytes += size + 5; // the repeated field's tag and length prefix
    if (full === undefined && this.pending.length >= this.perMessage) {
      full = this.flush();
    }
    return full;
  }

  /** The items not sent yet as one message, or undefined if there are none. */
  flush(): UploadBatchRequest | undefined {
    if (this.pending.length === 0) {
      return undefined;
    }
    const items = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    this.perMessage = this.itemsPerMessage;
    return create(UploadBatchRequestSchema, { part: { case: "items", value: { items } } });
  }
}

/** Ends an upload in error: only the first message of a stream may be a header, so the
 * service rejects the stream (INVALID_ARGUMENT) and drops what it staged. */
export const ABANDON: UploadBatchRequest = create(UploadBatchRequestSchema, {
  part: { case: "header", value: create(UploadBatchHeaderSchema) },
});

/** The messages of an UploadBatch stream, pulling items only as messages fill: the
 * header, the items, then the end message that alone commits the batch. */
export async function* uploadRequests(
  header: UploadBatchHeader,
  items: Iterable<ItemLike> | AsyncIterable<ItemLike>,
  packer: UploadPacker,
): AsyncGenerator<UploadBatchRequest> {
  yield create(UploadBatchRequestSchema, { part: { case: "header", value: header } });
  for await (const item of items) {
    const full = packer.add(item);
    if (full !== undefined) {
      yield full;
    }
  }
  const last = packer.flush();
  if (last !== undefined) {
    yield last;
  }
  yield create(UploadBatchRequestSchema, {
    part: { case: "end", value: { itemCount: BigInt(packer.count) } },
  });
}
