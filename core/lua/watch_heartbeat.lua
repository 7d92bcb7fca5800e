-- A server says it is alive, and writes its open WatchProgress streams per tenant.
-- KEYS: the watch servers (zset: server id -> when its liveness lapses, ms), then one
--       tenant's watchers hash (server id -> its open streams) per count
-- ARGV: this server's id, when its liveness lapses (ms), now (ms), the hashes' TTL (ms),
--       then the server's open streams of each tenant of KEYS[2..] (0: none any more)
-- The counts written are the server's own: they undo whatever a lapse of its liveness,
-- a lost write or a restart of Redis did to its fields. Servers whose liveness has
-- lapsed leave the zset; their fields go with the next open of each tenant's.
local own = ARGV[1]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], own)
for i = 2, #KEYS do
  local streams = tonumber(ARGV[i + 3])
  if streams > 0 then
    redis.call('HSET', KEYS[i], own, streams)
    redis.call('PEXPIRE', KEYS[i], ARGV[4])
  else
    redis.call('HDEL', KEYS[i], own)
  end
end
return 0
