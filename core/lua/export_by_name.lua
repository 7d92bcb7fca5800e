-- One page of an export in custom_id order: the next `count` members of the batch's
-- custom-id index (`<custom_id> <global index>`, built by index_ids.lua) after `bound`,
-- each with its outcome record or else its chunk's claim state, read in one step so
-- that a page never mixes two states of the batch.
-- KEYS: meta, the custom-id index, chunk states (HASH chunk -> claim state)
-- ARGV: batch key prefix, lower ZRANGEBYLEX bound, count
-- Returns {} without the batch; {state} without the index (it is to be built); else
-- {state, position, member, record or false, claim state or false, member, ...}, where
-- position counts the index's members up to the page's last.
local m = redis.call('HMGET', KEYS[1], 'state', 'chunk_size')
if not m[1] then return {} end
local state = tonumber(m[1])
if redis.call('EXISTS', KEYS[2]) == 0 then return {state} end
local members = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[2], '+', 'LIMIT', 0, tonumber(ARGV[3]))
local size = tonumber(m[2])
local reply = {state, 0}
local states = {}
for _, member in ipairs(members) do
  local index = tonumber(string.sub(member, string.find(member, ' ', 1, true) + 1))
  local n = math.floor(index / size)
  reply[#reply + 1] = member
  reply[#reply + 1] = redis.call('HGET', ARGV[1] .. 'o:' .. n, index - n * size)
  if states[n] == nil then states[n] = redis.call('HGET', KEYS[3], n) end
  reply[#reply + 1] = states[n]
end
if #members > 0 then
  reply[2] = redis.call('ZLEXCOUNT', KEYS[2], '-', '[' .. members[#members])
end
return reply
