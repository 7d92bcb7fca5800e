-- Record terminal item outcomes of a chunk (docs/design.md, "Counts").
-- KEYS: meta, chunks (states), o:<n> (outcomes), failed
-- ARGV: n, now (ms), release ('1' or '0'),
--       then per outcome: global index, item state, payload
-- Returns the batch state after the write, or nil when the batch is gone.
local meta, chunks, outcomes, failed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local n, now, release = ARGV[1], ARGV[2], ARGV[3] == '1'

local m = redis.call('HMGET', meta, 'state', 'chunk_size')
if not m[1] then return nil end
local state, size = tonumber(m[1]), tonumber(m[2])
local first = tonumber(n) * size
for i = 4, #ARGV, 3 do
  local offset = tonumber(ARGV[i]) - first
  if offset < 0 or offset >= size then
    return redis.error_reply('item ' .. ARGV[i] .. ' is not in chunk ' .. n)
  end
end

-- Only a claimed chunk takes outcomes: the items of a queued chunk are counted as
-- pending and those of a cancelled one as cancelled, not as running.
local claimed = redis.call('HGET', chunks, n)
if claimed == 'r' or claimed == 'd' then
  local counter = {['3'] = 'n_ok', ['4'] = 'n_fail', ['5'] = 'n_cancel'}
  local moved = {n_ok = 0, n_fail = 0, n_cancel = 0}
  local new = 0
  for i = 4, #ARGV, 3 do
    local index = tonumber(ARGV[i])
    -- First writer wins: a duplicate flush after a crash counts nothing twice.
    if redis.call('HSETNX', outcomes, index - first, ARGV[i + 2]) == 1 then
      local name = counter[ARGV[i + 1]]
      moved[name] = moved[name] + 1
      new = new + 1
      if name == 'n_fail' then redis.call('ZADD', failed, index, index) end
    end
  end
  if new > 0 then
    redis.call('HINCRBY', meta, 'n_run', -new)
    for _, name in ipairs({'n_ok', 'n_fail', 'n_cancel'}) do
      if moved[name] > 0 then redis.call('HINCRBY', meta, name, moved[name]) end
    end
  end
  if release then redis.call('HSET', chunks, n, 'd') end
end

-- QUEUED, RUNNING or CANCELLING: finished once every item is terminal.
if state <= 3 then
  local c = redis.call('HMGET', meta, 'total', 'n_ok', 'n_fail', 'n_cancel')
  if tonumber(c[2]) + tonumber(c[3]) + tonumber(c[4]) >= tonumber(c[1]) then
    if state == 3 then state = 6 else state = 4 end -- CANCELLED or COMPLETED
    redis.call('HSET', meta, 'state', state, 'ended', now)
  end
end
return state
