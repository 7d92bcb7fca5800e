-- Cancel a batch (docs/design.md, "Reliability"): QUEUED, RUNNING or PAUSED -> CANCELLING.
-- Every waiting retry gets a CANCELLED record; every chunk not claimed becomes 'c', its
-- items without a record counted cancelled; claimed chunks are left to their holders,
-- who cancel what they have not started (or to the claim that takes over from a dead
-- one). CANCELLED at once if nothing is left running. Any other state is returned
-- unchanged (idempotent).
-- Returns the batch state after the call, or nil when there is no such batch.
local m = redis.call('HMGET', META, 'state', 'total', 'chunks', 'chunk_size')
if not m[1] then return nil end
local state = tonumber(m[1])
if state ~= QUEUED and state ~= RUNNING_BATCH and state ~= PAUSED then return state end
local total, count, size = tonumber(m[2]), tonumber(m[3]), tonumber(m[4])

local states = {}
local flat = redis.call('HGETALL', CHUNKS)
for i = 1, #flat, 2 do states[flat[i]] = flat[i + 1] end

local marked, cancelled = {}, 0
local function flush()
  if #marked > 0 then redis.call('HSET', CHUNKS, unpack(marked)) end
  marked = {}
end
for n = 0, count - 1 do
  local key = tostring(n)
  local s = states[key]
  if s ~= 'c' and s ~= 'x' then
    local first, len = span(n, size, total)
    if is_claimed(s) then
      cancelled = cancelled + close_waiting(n, first, CANCELLED)
    else
      cancelled = cancelled + close_chunk(n, first, len, CANCELLED, false)
      marked[#marked + 1] = key
      marked[#marked + 1] = 'c'
      if #marked >= 1000 then flush() end
    end
  end
end
flush()
redis.call('DEL', PARKED)

redis.call('HINCRBY', META, 'n_cancel', cancelled)
redis.call('HSET', META, 'state', CANCELLING)
return settle()
