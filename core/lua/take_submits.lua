-- A tenant's submitted items per second: a token bucket that may run into debt, so that
-- a chunk larger than the bucket still goes through when the tenant is within its rate.
-- KEYS: the bucket (hash: tok, ts)
-- ARGV: rate (items/s), capacity, items, now (ms)
-- Returns 0 when the items are taken, else the ms until the bucket is out of debt.
local rate, capacity, items, now =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 'tok', 'ts')
local tokens = tonumber(b[1] or capacity)
local since = tonumber(b[2] or now)
tokens = math.min(capacity, tokens + rate * math.max(0, now - since) / 1000)
local wait = 0
if tokens < 0 then
  wait = math.ceil(-tokens / rate * 1000)
else
  tokens = tokens - items
end
redis.call('HSET', KEYS[1], 'tok', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 60000)
return wait
