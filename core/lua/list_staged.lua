-- File an upload in the staging index with what it holds once its next chunk is staged,
-- if the bytes staged by all uploads not yet committed stay within the limits
-- (core/upload.py, UploadSession._stage). Uploads past their staging TTL (their server
-- gone mid-stream) are dropped from the index first: they count no more.
-- KEYS: staging (zset member -> expiry ms), staging:items (hash member -> items),
--       staging:bytes (hash member -> bytes)
-- ARGV: member (`<tenant> <batch_id>`), the tenant's members' prefix (`<tenant> `),
--       the upload's items and bytes once the chunk is staged, now (ms), its new expiry
--       (ms), bytes all uploads may stage (0: no limit), bytes the tenant's may (0: no
--       limit)
-- Returns {0, items the other uploads have staged, items the tenant's other uploads
-- have} when filed (for the admission check that follows the chunk); {1, bytes the other
-- uploads have staged} past the service-wide limit, {2, bytes the tenant's other uploads
-- have staged} past the tenant's. A refusal leaves the upload's entry as it was.
local staging, items_key, bytes_key = KEYS[1], KEYS[2], KEYS[3]
local member, prefix = ARGV[1], ARGV[2]
local items, bytes, now, expiry = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local max_every, max_tenant = tonumber(ARGV[7]), tonumber(ARGV[8])

-- Slices of 1000: unpack() is bounded.
local expired = redis.call('ZRANGEBYSCORE', staging, '-inf', now)
for from = 1, #expired, 1000 do
  local to = math.min(from + 999, #expired)
  redis.call('ZREM', staging, unpack(expired, from, to))
  redis.call('HDEL', items_key, unpack(expired, from, to))
  redis.call('HDEL', bytes_key, unpack(expired, from, to))
end

local every, tenant, every_items, tenant_items = 0, 0, 0, 0
local live = redis.call('ZRANGEBYSCORE', staging, '(' .. now, '+inf')
for from = 1, #live, 1000 do
  local to = math.min(from + 999, #live)
  local sizes = redis.call('HMGET', bytes_key, unpack(live, from, to))
  local counts = redis.call('HMGET', items_key, unpack(live, from, to))
  for j = 1, #sizes do
    local other = live[from + j - 1]
    if other ~= member then
      local size, count = tonumber(sizes[j]) or 0, tonumber(counts[j]) or 0
      every, every_items = every + size, every_items + count
      if string.sub(other, 1, #prefix) == prefix then
        tenant, tenant_items = tenant + size, tenant_items + count
      end
    end
  end
end
if max_every > 0 and every + bytes > max_every then return {1, every} end
if max_tenant > 0 and tenant + bytes > max_tenant then return {2, tenant} end

redis.call('ZADD', staging, expiry, member)
redis.call('HSET', items_key, member, items)
redis.call('HSET', bytes_key, member, bytes)
return {0, every_items, tenant_items}
