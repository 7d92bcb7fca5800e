-- Cancel a batch (docs/design.md, "Reliability"): QUEUED, RUNNING or PAUSED -> CANCELLING.
-- Every waiting retry gets a CANCELLED record; every chunk not claimed becomes 'c', its
-- items without a record counted cancelled; claimed chunks are left to their holders,
-- who cancel what they have not started (or to the claim that takes over from a dead
-- one). CANCELLED at once if nothing is left running. Any other state is returned
-- unchanged (idempotent).
-- Returns {the batch state after the call, ended_now}, or nil when there is no such batch.
local m = redis.call('HMGET', META, 'state', 'total', 'chunks', 'chunk_size')
if not m[1] then return nil end
local state = tonumber(m[1])
if state ~= QUEUED and state ~= RUNNING_BATCH and state ~= PAUSED then return {state, false} end
local total, count, size = tonumber(m[2]), tonumber(m[3]), tonumber(m[4])

local cancelled = 0
each_open_chunk(count, size, total, function(n, first, len, s)
  if is_claimed(s) then
    cancelled = cancelled + close_waiting(n, first, CANCELLED)
    return nil
  end
  cancelled = cancelled + close_chunk(n, first, len, CANCELLED, false)
  return 'c'
end)
redis.call('DEL', PARKED)

redis.call('HINCRBY', META, 'n_cancel', cancelled)
redis.call('HSET', META, 'state', CANCELLING)
batch_event('CANCEL_REQUESTED')
local after = settle()
return {after, ended_now}
