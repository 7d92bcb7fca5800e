-- One step of building a batch's custom-id index (Keys.ids_by_name): what one HSCAN step
-- of the ids hash returns goes into a sorted set as `<custom_id> <index>` members, all of
-- score 0, so that ZRANGEBYLEX walks the items by custom_id. ZADD is idempotent, so the
-- items HSCAN returns twice do no harm.
-- KEYS: ids (HASH custom_id -> global index), the index being built (ZSET)
-- ARGV: HSCAN cursor, HSCAN count, how long the index being built may live (ms)
-- Returns the next HSCAN cursor ("0": done).
local reply = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields = reply[2]
local args = {}
for i = 1, #fields, 2 do
  args[#args + 1] = 0
  args[#args + 1] = fields[i] .. ' ' .. fields[i + 1]
  -- unpack() is bounded by the Lua C stack
  if #args >= 200 then
    redis.call('ZADD', KEYS[2], unpack(args))
    args = {}
  end
end
if #args > 0 then redis.call('ZADD', KEYS[2], unpack(args)) end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return reply[1]
