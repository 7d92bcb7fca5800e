-- Prelude of every per-batch script (before _batch.lua): files a batch's completion
-- callback in the outbox when the batch ends, in the same script call as the end
-- (batchd.core.callbacks delivers it). docs/design.md, "Completion callbacks".
--
-- file_callback(meta, batch, now, outbox, ended): if the batch has a callback URL (meta
-- `callback`), writes a JSON record of its end (`ended`: _batch.lua's ended_now) under a
-- new event id in `<outbox>:events` and makes it due at once in `outbox` (a zset). The
-- id is `<batch_id>:<created ms>:<n>`, n counting the batch's ends (meta `cb_seq`): a
-- redrive that ends the batch again files a new event; a batch deleted and submitted
-- again under its id has another creation time.
local function file_callback(meta, batch, now, outbox, ended)
  local f = redis.call('HMGET', meta, 'callback', 'tenant')
  if not f[1] or f[1] == '' then return end
  local id = batch .. ':' .. ended[8] .. ':' .. redis.call('HINCRBY', meta, 'cb_seq', 1)
  local record = cjson.encode({
    id = id, batch = batch, tenant = f[2] or 'default', url = f[1], filed = now,
    state = tonumber(ended[1]), handler = ended[2], total = tonumber(ended[3]),
    succeeded = tonumber(ended[4]), failed = tonumber(ended[5]),
    cancelled = tonumber(ended[6]), expired = tonumber(ended[7]),
    created = tonumber(ended[8]), started = tonumber(ended[9] or '') or false,
    ended = tonumber(ended[10]),
  })
  redis.call('HSET', outbox .. ':events', id, record)
  redis.call('ZADD', outbox, now, id)
end
