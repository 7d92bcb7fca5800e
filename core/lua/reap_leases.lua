-- Reap expired leases (after _jobs.lua): each one goes, and its chunk gets a fresh job,
-- `<batch_id>:<chunk>:l<now>`, whose claim takes the chunk over. Safe to run anywhere
-- at once: a lease is removed, and its job enqueued, by one call only.
-- KEYS: leases, queue
-- ARGV: now (ms), at most this many leases, ARQ job key prefix, job function, job expiry (ms)
-- Returns the number of leases reaped.
local now = tonumber(ARGV[1])
local enqueue = make_enqueue(KEYS[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), now)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[1], member)
  local batch_id, chunk = string.match(member, '^(.*)/(%d+)$')
  if batch_id then enqueue(batch_id, chunk, 'l', now) end
end
return #expired
