-- Takes `count` successive milliseconds of a tenant's dispatch clock (as _batch.lua's
-- tenant_time, for the commit's first window of jobs): never behind the stamp of the job
-- at the head of the handler's queue, or now if that is later or the queue is empty.
-- KEYS: the tenants' dispatch clocks (hash), the handler's queue
-- ARGV: tenant, count, now (ms), the batch's priority
-- Returns the first of them.
local now = tonumber(ARGV[3])
local floor = now
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if head[2] then
  floor = math.min(now, tonumber(head[2]) + (tonumber(ARGV[4]) + 1000) * 10000000)
end
local at = math.max(tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0'), floor)
redis.call('HSET', KEYS[1], ARGV[1], at + tonumber(ARGV[2]))
return at + 1
