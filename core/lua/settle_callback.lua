-- Settle one claimed delivery of a completion callback (batchd.core.callbacks.outbox).
-- KEYS: the outbox (zset), its events (hash), its tries (hash), as claim_callbacks.lua
-- ARGV: event id, the claim's tries, 'done' | 'retry' | 'release' | 'drop', due time (ms,
--       for retry and release)
-- done (the receiver acknowledged): the event is removed, whoever holds it now.
-- retry: due again then; release (never attempted: its receiver's host was at its cap in
-- the worker): due again then, the claim's try uncounted; drop: removed. These only while
-- the claim is the latest (its lease may have lapsed and another worker claimed the event
-- since: that one decides).
-- Returns 1 if settled, else 0.
local OUTBOX, EVENTS, TRIES = KEYS[1], KEYS[2], KEYS[3]
local id, tries, action = ARGV[1], ARGV[2], ARGV[3]
local function remove()
  redis.call('ZREM', OUTBOX, id)
  redis.call('HDEL', EVENTS, id)
  redis.call('HDEL', TRIES, id)
end
if action == 'done' then
  remove()
  return 1
end
if redis.call('HGET', TRIES, id) ~= tries then return 0 end
if action == 'retry' then
  redis.call('ZADD', OUTBOX, ARGV[4], id)
elseif action == 'release' then
  redis.call('HINCRBY', TRIES, id, -1)
  redis.call('ZADD', OUTBOX, ARGV[4], id)
else
  remove()
end
return 1
