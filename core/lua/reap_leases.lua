-- Reap expired leases (after _jobs.lua): each one goes, and its chunk gets a fresh job,
-- `<batch_id>:<chunk>:l<now>`, in the queue of its batch's handler, whose claim takes the
-- chunk over. Safe to run anywhere at once: a lease is removed, and its job enqueued, by
-- one call only.
-- KEYS: leases, queue prefix
-- ARGV: now (ms), at most this many leases, ARQ job key prefix, job function, job expiry
--       (ms), the meta key of the batch with the empty id (`batchd:b:{}:meta`)
-- Returns the number of leases reaped.
local now = tonumber(ARGV[1])
local meta_head, meta_tail = string.match(ARGV[6], '^(.*{)(}.*)$')
local queue = nil
local enqueue = make_enqueue(function() return queue end, ARGV[3], ARGV[4], tonumber(ARGV[5]), now)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[1], member)
  local batch_id, chunk = string.match(member, '^(.*)/(%d+)$')
  if batch_id then
    local handler = redis.call('HGET', meta_head .. batch_id .. meta_tail, 'handler')
    if handler then
      queue = KEYS[2] .. handler
      enqueue(batch_id, chunk, 'l', now)
    end
  end
end
return #expired
