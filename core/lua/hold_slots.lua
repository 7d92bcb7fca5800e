-- A chunk's holder asks to hold `count` of the batch's max_concurrent slots (more to
-- start items, fewer as they finish, 0 to let go of them all).
-- KEYS[12]: the batch's slots hash: chunk -> '<token>:<count>'
-- ARGV[OWN_ARG..]: chunk, token, count, limit (the batch's max_concurrent)
-- A holding counts only while its chunk is still claimed under its token with a live
-- lease (the lease the chunk's holder renews anyway): a crashed worker's slots come
-- free with its lease, and a taken-over chunk's old holding is dropped.
-- Returns {the count now held, the batch's state (0: gone)}: min(count, what the other
-- live holdings leave), and never less than already held when asking for more (a holder
-- keeps what it has); the state tells a holder waiting for slots of a pause or a cancel.
local SLOTS = KEYS[12]
local chunk, token = ARGV[OWN_ARG], ARGV[OWN_ARG + 1]
local count, limit = tonumber(ARGV[OWN_ARG + 2]), tonumber(ARGV[OWN_ARG + 3])
local others, mine = 0, 0
local entries = redis.call('HGETALL', SLOTS)
for i = 1, #entries, 2 do
  local n, holding = entries[i], entries[i + 1]
  local sep = string.find(holding, ':', 1, true)
  local owner, held = string.sub(holding, 1, sep - 1), tonumber(string.sub(holding, sep + 1))
  local lease = tonumber(redis.call('ZSCORE', LEASES, lease_member(n)) or '0')
  if redis.call('HGET', CHUNKS, n) ~= 'r:' .. owner or lease <= NOW then
    redis.call('HDEL', SLOTS, n)
  elseif n == chunk and owner == token then
    mine = held
  elseif n ~= chunk then
    others = others + held
  end
end
local granted = math.max(0, math.min(count, limit - others))
if count < mine then granted = count elseif granted < mine then granted = mine end
if redis.call('HGET', CHUNKS, chunk) ~= 'r:' .. token then granted = 0 end
if granted > 0 then
  redis.call('HSET', SLOTS, chunk, token .. ':' .. granted)
  redis.call('PEXPIRE', SLOTS, 86400000)
else
  redis.call('HDEL', SLOTS, chunk)
end
return {granted, tonumber(redis.call('HGET', META, 'state') or '0')}
