-- Hand a chunk to a worker (docs/design.md, "Counts").
-- KEYS: meta, chunks (states), c:<n> (items), o:<n> (outcomes)
-- ARGV: n, now (ms)
-- Returns nil when the batch is gone or the chunk is done or cancelled, else
-- {items, handler, options, chunk_size, {local indexes that already have an outcome}}.
local meta, chunks, items_key, outcomes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local n, now = ARGV[1], ARGV[2]

local m = redis.call('HMGET', meta, 'state', 'handler', 'options', 'chunk_size', 'total')
if not m[1] then return nil end
local items = redis.call('GET', items_key)
if not items then return nil end

local claimed = redis.call('HGET', chunks, n)
if claimed == 'd' or claimed == 'c' then return nil end
if not claimed then
  -- First claim: the chunk's items without an outcome start running. A chunk
  -- already 'r' (a job retried after a crash) is handed out again as it is.
  local size, total = tonumber(m[4]), tonumber(m[5])
  local len = math.min(size, total - tonumber(n) * size)
  redis.call('HSET', chunks, n, 'r')
  redis.call('HINCRBY', meta, 'n_run', len - redis.call('HLEN', outcomes))
  if tonumber(m[1]) == 1 then -- QUEUED -> RUNNING
    redis.call('HSET', meta, 'state', 2, 'started', now)
  end
end
return {items, m[2], m[3], m[4], redis.call('HKEYS', outcomes)}
