-- Expire a batch whose completion window is over (docs/design.md, "Reliability").
-- Every item without a record is EXPIRED: waiting and running ones (in claimed chunks)
-- get a record, those of unclaimed chunks are only counted; every chunk not cancelled
-- becomes 'x' (a late holder's records and renewals are refused) and the batch ends:
-- COMPLETED, or CANCELLED if it was cancelling. Unfinished batches whose deadline moved
-- (a redrive) are filed again under it.
-- Returns the batch's end (ended_now) if it expired, else 0.
local m = redis.call('HMGET', META, 'state', 'total', 'chunks', 'chunk_size', 'deadline')
local state = tonumber(m[1])
if not state or not is_open(state) or not m[5] then
  redis.call('ZREM', DEADLINES, BATCH)
  return 0
end
if tonumber(m[5]) > NOW then
  redis.call('ZADD', DEADLINES, m[5], BATCH)
  return 0
end
local size = tonumber(m[4])
local total, count = truncate_upload()

local expired = 0
each_open_chunk(count, size, total, function(n, first, len, s)
  local claimed = is_claimed(s)
  expired = expired + close_chunk(n, first, len, EXPIRED_ITEM, claimed)
  if claimed then redis.call('ZREM', LEASES, lease_member(n)) end
  return 'x'
end)

redis.call('HINCRBY', META, 'n_exp', expired)
if state == CANCELLING then finish(CANCELLED_BATCH) else finish(COMPLETED) end
return ended_now
