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

local duplicate = file_ids(ids_key, cmsgpack.unpack(ARGV[5]), first)
if duplicate then return duplicate end
redis.call('SET', chunk_key, ARGV[3], 'PX', ttl)
redis.call('PEXPIRE', ids_key, ttl)
redis.call('PEXPIRE', lock, ttl)
return 0
