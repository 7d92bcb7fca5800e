-- Delete a finished batch: every key of it, its entries in the index and its tenant's
-- (`<batches>:<tenant>`), its deadline, its leases and its request key (if that still
-- names it).
-- Returns 1 when deleted, 0 when there is no such batch, -1 when it is not finished.
local m = redis.call('HMGET', META, 'state', 'chunks', 'tenant')
if not m[1] then return 0 end
if is_open(tonumber(m[1])) then return -1 end
local count = tonumber(m[2])
batch_event('DELETED')

local request = request_key()
if request and redis.call('GET', request) == BATCH then redis.call('DEL', request) end
local keys, members = {}, {}
each_batch_key(count, function(key) keys[#keys + 1] = key end)
keys[#keys + 1] = PREFIX .. 'byname'  -- Keys.ids_by_name, if an export built it
for n = 0, count - 1 do members[#members + 1] = lease_member(n) end
in_slices(keys, 500, function(slice) redis.call('UNLINK', unpack(slice)) end)
in_slices(members, 500, function(slice) redis.call('ZREM', LEASES, unpack(slice)) end)
redis.call('ZREM', BATCHES, BATCH)
redis.call('ZREM', BATCHES .. ':' .. (m[3] or 'default'), BATCH)
redis.call('ZREM', DEADLINES, BATCH)
return 1
