-- A server opens a WatchProgress stream for a tenant, if the tenant is within its limit.
-- KEYS: the tenant's watchers (hash: server id -> its open streams), the watch servers
--       (zset: server id -> when its liveness lapses, ms)
-- ARGV: this server's id, the tenant's limit, now (ms), the hash's TTL (ms)
-- The streams of servers whose liveness has lapsed do not count, and their fields are
-- dropped (a live server that was only late puts its own back with its next heartbeat).
-- Returns {1, streams open with this one} when opened, else {0, streams open}.
local own, limit, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local open = 0
for i = 1, #fields, 2 do
  local server, streams = fields[i], tonumber(fields[i + 1])
  local lapses = server ~= own and redis.call('ZSCORE', KEYS[2], server)
  if server == own or (lapses and tonumber(lapses) >= now) then
    open = open + streams
  else
    redis.call('HDEL', KEYS[1], server)
  end
end
if open >= limit then
  return {0, open}
end
redis.call('HINCRBY', KEYS[1], own, 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, open + 1}
