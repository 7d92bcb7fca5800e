-- A server closes one of a tenant's WatchProgress streams.
-- KEYS: the tenant's watchers (hash: server id -> its open streams)
-- ARGV: this server's id
-- The field goes at 0 (or below: it was dropped while the stream was open, and the
-- server's next heartbeat writes its true count back).
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
