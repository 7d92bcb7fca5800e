-- Stage one chunk of an upload (docs/design.md, "Writing a batch").
-- KEYS: lock, ids, c:<n> (items)
-- ARGV: lock token, ttl (ms), chunk bytes, global index of the chunk's first item,
--       the chunk's custom_ids in order (msgpack array: codec.encode_ids)
-- Returns 0 when staged, -1 when the upload no longer holds the lock, or
-- {position in this chunk, global index of the first use} for the first duplicate
-- custom_id; a rejected chunk writes nothing.
local lock, ids_key, chunk_key = KEYS[1], KEYS[2], KEYS[3]
local token, ttl, first = ARGV[1], ARGV[2], tonumber(ARGV[4])

if redis.call('GET', lock) ~= token then return -1 end
-- Our lock and no batch yet: anything left in ids is from an expired upload.
if first == 0 then redis.call('DEL', ids_key) end

local ids = cmsgpack.unpack(ARGV[5])

-- Check every id before writing any; slices because unpack() is bounded.
local seen = {}
for from = 1, #ids, 1000 do
  local to = math.min(from + 999, #ids)
  local known = redis.call('HMGET', ids_key, unpack(ids, from, to))
  for j = 1, #known do
    local i = from + j - 1
    local prev = known[j] or seen[ids[i]]
    if prev then return {i - 1, tonumber(prev)} end
    seen[ids[i]] = first + i - 1
  end
end

for from = 1, #ids, 500 do
  local pairs_ = {}
  for i = from, math.min(from + 499, #ids) do
    pairs_[#pairs_ + 1] = ids[i]
    pairs_[#pairs_ + 1] = first + i - 1
  end
  redis.call('HSET', ids_key, unpack(pairs_))
end
redis.call('SET', chunk_key, ARGV[3], 'PX', ttl)
redis.call('PEXPIRE', ids_key, ttl)
redis.call('PEXPIRE', lock, ttl)
return 0
