-- Claim due completion callbacks (batchd.core.callbacks.outbox) for one delivery each.
-- KEYS: the outbox (zset event id -> due ms), its events (hash id -> JSON record), its
--       tries (hash id -> attempts claimed)
-- ARGV: now (ms), lease end (ms), most events to claim
-- Each due event is counted a try and made due again at the lease end, so no other
-- worker claims it while this one delivers; if this one dies, it is due again then (at
-- least once). An id whose record is gone is dropped.
-- Returns {id, record, tries, ...}.
local OUTBOX, EVENTS, TRIES = KEYS[1], KEYS[2], KEYS[3]
local now, lease_end, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local claimed = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', OUTBOX, '-inf', now, 'LIMIT', 0, limit)) do
  local record = redis.call('HGET', EVENTS, id)
  if record then
    local tries = redis.call('HINCRBY', TRIES, id, 1)
    redis.call('ZADD', OUTBOX, lease_end, id)
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = record
    claimed[#claimed + 1] = tries
  else
    redis.call('ZREM', OUTBOX, id)
    redis.call('HDEL', TRIES, id)
  end
end
return claimed
