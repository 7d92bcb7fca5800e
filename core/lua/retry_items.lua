-- Redrive: FAILED and EXPIRED items run again (docs/design.md, "Reliability").
-- KEYS[12]: the request's redrive key (only read and written with a request id)
-- ARGV[OWN_ARG..]: has request ('1' or '0'), completion window (ms, 0: none), result TTL (ms,
--            0: keep), then the global indexes to retry (none: every FAILED and
--            EXPIRED item)
-- Each item's record goes and it waits, due now, with a fresh attempt budget; an
-- expired ('x') or cancelled ('c') chunk touched is queued again (those of its items
-- without a record that are not retried get an EXPIRED or CANCELLED record). One job per chunk touched. A finished batch runs again:
-- no end time, no retention, a new deadline.
-- Returns {'ok', requeued}, {'replay', stored result}, {'missing'}, {'cancelling'} or
-- {'invalid', position, item state, ...} for the indexes that cannot be retried.
local has_request, window, ttl = ARGV[OWN_ARG] == '1', tonumber(ARGV[OWN_ARG + 1]), tonumber(ARGV[OWN_ARG + 2])
local REDRIVE = KEYS[12]
if has_request then
  local prior = redis.call('GET', REDRIVE)
  if prior then return {'replay', prior} end
end

local m = redis.call('HMGET', META, 'state', 'total', 'chunks', 'chunk_size', 'ended')
if not m[1] then return {'missing'} end
local state = tonumber(m[1])
if state == CANCELLING then return {'cancelling'} end
local total, count, size = tonumber(m[2]), tonumber(m[3]), tonumber(m[4])
local ended = tonumber(m[5] or '')

local states = {}
local flat = redis.call('HGETALL', CHUNKS)
for i = 1, #flat, 2 do states[tonumber(flat[i])] = flat[i + 1] end

-- chunk -> {records = {local indexes with a FAILED/EXPIRED record}, derived = set or true}
local touched, order = {}, {}
local function entry(n)
  if not touched[n] then
    touched[n] = {records = {}, derived = {}}
    order[#order + 1] = n
  end
  return touched[n]
end
local function add_record(index)
  local n = math.floor(index / size)
  local e = entry(n)
  e.records[#e.records + 1] = index - n * size
end

if #ARGV < OWN_ARG + 3 then
  for _, zset in ipairs({FAILED, EXPIRED}) do
    for _, index in ipairs(redis.call('ZRANGE', zset, 0, -1)) do add_record(tonumber(index)) end
  end
  for n = 0, count - 1 do
    if states[n] == 'x' then entry(n).derived = true end
  end
else
  local bad = {}
  for i = OWN_ARG + 3, #ARGV do
    local index = tonumber(ARGV[i])
    local n = math.floor(index / size)
    local l = index - n * size
    local raw = redis.call('HGET', outcomes_key(n), l)
    local item = PENDING
    if raw then
      item = cmsgpack.unpack(raw)[1]
    elseif redis.call('ZSCORE', waiting_key(n), l) then
      item = PENDING
    elseif states[n] == 'x' then
      item = EXPIRED_ITEM
    elseif states[n] == 'c' then
      item = CANCELLED
    elseif is_claimed(states[n]) then
      item = 2 -- RUNNING
    end
    if raw and (item == 4 or item == EXPIRED_ITEM) then
      add_record(index)
    elseif not raw and item == EXPIRED_ITEM then
      entry(n).derived[l] = true
    else
      bad[#bad + 1] = i - (OWN_ARG + 3)
      bad[#bad + 1] = item
    end
  end
  if #bad > 0 then return {'invalid', unpack(bad)} end
end

local requeued, n_fail, n_exp = 0, 0, 0
for _, n in ipairs(order) do
  local e = touched[n]
  local first, len = span(n, size, total)
  local o, w = outcomes_key(n), waiting_key(n)
  local s = states[n]
  if s == 'x' or s == 'c' then
    -- The chunk is queued again, so its state, which says what its items without a
    -- record are (EXPIRED or CANCELLED), goes: those not retried get a record of it.
    local derived = CANCELLED
    if s == 'x' then derived = EXPIRED_ITEM end
    for l = 0, len - 1 do
      if redis.call('HEXISTS', o, l) == 0 then
        if derived == EXPIRED_ITEM and (e.derived == true or e.derived[l]) then
          requeued = requeued + 1
          n_exp = n_exp + 1
        else
          redis.call('HSET', o, l, outcome(derived, 0, ended, 0, ''))
          if derived == EXPIRED_ITEM then redis.call('ZADD', EXPIRED, first + l, first + l) end
        end
      end
    end
    redis.call('HDEL', CHUNKS, n)
  end
  for _, l in ipairs(e.records) do
    local item = cmsgpack.unpack(redis.call('HGET', o, l))[1]
    if item == 4 then n_fail = n_fail + 1 else n_exp = n_exp + 1 end
    redis.call('HDEL', o, l)
    redis.call('ZREM', FAILED, first + l)
    redis.call('ZREM', EXPIRED, first + l)
    redis.call('HDEL', ATTEMPTS, first + l)
    redis.call('ZADD', w, NOW, l)
    requeued = requeued + 1
  end
  chunk_job(n, 'r', NOW)
end

if requeued > 0 then
  redis.call('HINCRBY', META, 'n_fail', -n_fail)
  redis.call('HINCRBY', META, 'n_exp', -n_exp)
  if not is_open(state) then
    redis.call('INCR', tenant_counter(':open'))
    redis.call('HDEL', META, 'ended')
    each_batch_key(count, function(key) redis.call('PERSIST', key) end)
    local request = request_key()
    if request then redis.call('PERSIST', request) end
  end
  if state ~= QUEUED and state ~= PAUSED then redis.call('HSET', META, 'state', RUNNING_BATCH) end
  account()
  if window > 0 then
    redis.call('HSET', META, 'deadline', NOW + window)
    redis.call('ZADD', DEADLINES, NOW + window, BATCH)
  else
    redis.call('ZADD', DEADLINES, 'inf', BATCH)  -- open, with no deadline
  end
  batch_event('RETRIED')
end

if has_request then
  local stored = requeued .. ':' .. BATCH
  if ttl > 0 then
    redis.call('SET', REDRIVE, stored, 'PX', ttl)
  else
    redis.call('SET', REDRIVE, stored)
  end
end
return {'ok', requeued}
