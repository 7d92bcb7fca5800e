-- Cancel a batch (docs/design.md, "Counts"): QUEUED or RUNNING -> CANCELLING, every
-- unclaimed chunk -> 'c' with its items counted cancelled; CANCELLED at once if
-- nothing is left running. Any other state is returned unchanged (idempotent).
-- KEYS: meta, chunks (states)
-- ARGV: now (ms)
-- Returns the batch state after the call, or nil when there is no such batch.
local meta, chunks = KEYS[1], KEYS[2]
local now = ARGV[1]

local m = redis.call('HMGET', meta, 'state', 'total', 'chunks', 'chunk_size')
if not m[1] then return nil end
local state = tonumber(m[1])
if state ~= 1 and state ~= 2 then return state end
local total, count, size = tonumber(m[2]), tonumber(m[3]), tonumber(m[4])

local claimed = {}
local flat = redis.call('HGETALL', chunks)
for i = 1, #flat, 2 do claimed[flat[i]] = true end

-- HSET in slices: unpack() is bounded by the Lua C stack.
local pending, cancelled = {}, 0
local function flush()
  if #pending > 0 then redis.call('HSET', chunks, unpack(pending)) end
  pending = {}
end
for n = 0, count - 1 do
  local key = tostring(n)
  if not claimed[key] then
    pending[#pending + 1] = key
    pending[#pending + 1] = 'c'
    cancelled = cancelled + math.min(size, total - n * size)
    if #pending >= 1000 then flush() end
  end
end
flush()

local finished = tonumber(redis.call('HINCRBY', meta, 'n_cancel', cancelled))
local c = redis.call('HMGET', meta, 'n_ok', 'n_fail')
finished = finished + tonumber(c[1]) + tonumber(c[2])
if finished >= total then
  redis.call('HSET', meta, 'state', 6, 'ended', now) -- CANCELLED
  return 6
end
redis.call('HSET', meta, 'state', 3) -- CANCELLING
return 3
