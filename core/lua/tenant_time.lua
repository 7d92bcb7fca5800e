-- Takes `count` successive milliseconds of a tenant's dispatch clock, which never lags
-- the real one (as _batch.lua's tenant_time, for the commit's first window of jobs).
-- KEYS: the tenants' dispatch clocks (hash)
-- ARGV: tenant, count, now (ms)
-- Returns the first of them.
local at = math.max(tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0'), tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], ARGV[1], at + tonumber(ARGV[2]))
return at + 1
