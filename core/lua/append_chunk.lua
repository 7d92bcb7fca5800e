-- Append the next chunk of an upload that starts early (docs/design.md, "Uploads that
-- start early"): the batch exists, holding every item the header announced; its chunks
-- come one by one, each runnable once here. Written for good (the batch holds it), its
-- custom_ids checked against those appended before it; enqueued at once if the batch
-- owes its dispatch window a job (dispatch_next counts them in meta `owed`).
-- KEYS (own): the upload lock, the index of early uploads (zset: batch -> lease end, ms)
-- ARGV (own): lock token, lease (ms), chunk number, chunk bytes, the chunk's custom_ids
--   (msgpack array: codec.encode_ids), global index of its first item, the wake channel
-- Returns 0 when appended, -1 when the upload no longer holds its lock, {-2, state} when
-- the batch no longer takes items (cancelled, expired), or {position in this chunk,
-- global index of the first use} for the first duplicate custom_id; a refused chunk
-- writes nothing.
local lock, uploading = KEYS[12], KEYS[13]
local token, lease = ARGV[OWN_ARG], tonumber(ARGV[OWN_ARG + 1])
local n, first = tonumber(ARGV[OWN_ARG + 2]), tonumber(ARGV[OWN_ARG + 5])
local wake = ARGV[OWN_ARG + 6]

if redis.call('GET', lock) ~= token then return -1 end
local m = redis.call('HMGET', META, 'state', 'up', 'uploader', 'chunks', 'cursor', 'owed', 'prio')
if m[3] ~= token then return -1 end
local state = tonumber(m[1])
if state ~= QUEUED and state ~= RUNNING_BATCH and state ~= PAUSED then return {-2, state} end
if tonumber(m[2]) ~= n or n >= tonumber(m[4]) then return -1 end

local duplicate = file_ids(IDS, cmsgpack.unpack(ARGV[OWN_ARG + 4]), first)
if duplicate then return duplicate end
redis.call('SET', items_key(n), ARGV[OWN_ARG + 3])

-- The jobs owed, for chunks now here (the cursor never passes the chunks appended).
local cursor, owed = tonumber(m[5]), tonumber(m[6] or '0')
local due = math.min(owed, n + 1 - cursor)
if due > 0 then
  local at = tenant_time(due, m[7])
  for k = 0, due - 1 do
    enqueue_due(BATCH, cursor + k, 'q', dispatch_score(m[7], at + k))
  end
  redis.call('PUBLISH', wake, QUEUE())
end
redis.call('HSET', META, 'up', n + 1, 'cursor', cursor + due, 'owed', owed - due)
redis.call('PEXPIRE', lock, lease)
redis.call('ZADD', uploading, NOW + lease, BATCH)
return 0
