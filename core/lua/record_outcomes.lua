-- Record item outcomes of a chunk (docs/design.md, "Reliability").
-- ARGV[OWN_ARG..]: n, token, release ('1' or '0'), outcomes: a msgpack array of
--            [global index, item state, payload, due (ms; 0 unless a retry)]
--            (one argument, not four per outcome: packing thousands of arguments
--            would be the worker's biggest cost of recording)
-- A terminal outcome (payload: the record) is kept if the item has none yet — first
-- writer wins, whichever claim it comes from — and moves the counters: a running item
-- leaves n_run, a waiting one was pending. A retry (state PENDING, payload: the attempts
-- entry) puts an item with no record that is not already waiting into the chunk's
-- waiting set (in a cancelling batch it is CANCELLED instead) and schedules a job for
-- the earliest such retry. Only claimed ('r:') and done ('d') chunks take outcomes.
-- `release` counts only from the claim's holder (state 'r:<token>'): items it left
-- unrecorded wait again, due now (cancelled, if the batch is cancelling), the chunk is
-- done, its lease dropped, and a job scheduled for its first waiting item.
-- `in_flight` (unless negative): the holder's items of the chunk in flight now, recorded
-- (`started`) while the claim holds.
-- Returns {batch state, the chunk's first due retry (ms) or false, 1 if the chunk was
-- held under token, the batch's end if these records ended it (ended_now)}, or nil when
-- the batch is gone.
local n, token, release = ARGV[OWN_ARG], ARGV[OWN_ARG + 1], ARGV[OWN_ARG + 2] == '1'
local entries = cmsgpack.unpack(ARGV[OWN_ARG + 3])
local in_flight = tonumber(ARGV[OWN_ARG + 4] or '-1')
-- Outcomes per block call: well inside Lua's limit on unpack()ed arguments.
local BLOCK = 1000

local m = redis.call('HMGET', META, 'state', 'chunk_size', 'total')
if not m[1] then return nil end
local state, size = tonumber(m[1]), tonumber(m[2])
local first, len = span(n, size, tonumber(m[3]))
for _, e in ipairs(entries) do
  local offset = e[1] - first
  if offset < 0 or offset >= len then
    return redis.error_reply('item ' .. e[1] .. ' is not in chunk ' .. n)
  end
end

local claimed = redis.call('HGET', CHUNKS, n)
local held = claimed == 'r:' .. token
if is_claimed(claimed) or claimed == 'd' then
  local o, w = outcomes_key(n), waiting_key(n)
  local counter = {[3] = 'n_ok', [4] = 'n_fail', [5] = 'n_cancel', [6] = 'n_exp'}
  local moved = {n_ok = 0, n_fail = 0, n_cancel = 0, n_exp = 0}
  local left = 0 -- running items that stopped running
  local soonest = nil
  -- Most chunks have no retries: skip the per-item clean-up calls when nothing can need
  -- them.
  local any_waiting = redis.call('ZCARD', w) > 0
  local any_attempts = redis.call('HLEN', ATTEMPTS) > 0
  local terminal = {} -- terminal outcomes, recorded in blocks below
  for _, e in ipairs(entries) do
    local index, kind, payload = e[1], e[2], e[3]
    local l = index - first
    if kind ~= PENDING then
      terminal[#terminal + 1] = e
    elseif redis.call('HEXISTS', o, l) == 0 and not redis.call('ZSCORE', w, l) then
      left = left + 1
      if state == CANCELLING then
        local a = cmsgpack.unpack(payload)
        redis.call('HSET', o, l, outcome(CANCELLED, a[1], NOW, a[2], a[3]))
        redis.call('HDEL', ATTEMPTS, index)
        moved.n_cancel = moved.n_cancel + 1
      else
        local due = e[4]
        redis.call('ZADD', w, due, l)
        redis.call('HSET', ATTEMPTS, index, payload)
        any_waiting, any_attempts = true, true
        if not soonest or due < soonest then soonest = due end
      end
    end
  end
  -- Terminal outcomes, first writer wins: a block's HMGET finds the items that already
  -- have a record and one HSET writes the others (a call per block, not per item: at
  -- high rates per-item calls would be most of Redis's work).
  local written = {}
  for start = 1, #terminal, BLOCK do
    local stop = math.min(start + BLOCK - 1, #terminal)
    local fields = {}
    for j = start, stop do fields[#fields + 1] = terminal[j][1] - first end
    local have = redis.call('HMGET', o, unpack(fields))
    local records, ended, failed, expired, cleared = {}, {}, {}, {}, {}
    for k = 1, #fields do
      local l = fields[k]
      if not have[k] and not written[l] then
        written[l] = true
        local e = terminal[start + k - 1]
        local index, name = e[1], counter[e[2]]
        records[#records + 1] = l
        records[#records + 1] = e[3]
        ended[#ended + 1] = l
        cleared[#cleared + 1] = index
        moved[name] = moved[name] + 1
        if name == 'n_fail' then failed[#failed + 1] = index; failed[#failed + 1] = index end
        if name == 'n_exp' then expired[#expired + 1] = index; expired[#expired + 1] = index end
      end
    end
    if #records > 0 then
      redis.call('HSET', o, unpack(records))
      -- Not waiting, so it was running (every other item of the chunk has a record).
      local was_waiting = 0
      if any_waiting then was_waiting = redis.call('ZREM', w, unpack(ended)) end
      left = left + #ended - was_waiting
      if any_attempts then redis.call('HDEL', ATTEMPTS, unpack(cleared)) end
      if #failed > 0 then redis.call('ZADD', FAILED, unpack(failed)) end
      if #expired > 0 then redis.call('ZADD', EXPIRED, unpack(expired)) end
    end
  end
  if left > 0 then set_running(n, math.max(running_of(n) - left, 0), true) end
  for name, count in pairs(moved) do
    if count > 0 then redis.call('HINCRBY', META, name, count) end
  end
  if soonest then chunk_job(n, 't', soonest) end

  if release and held then
    if state == CANCELLING then
      redis.call('HINCRBY', META, 'n_cancel', close_chunk(n, first, len, CANCELLED, true))
    else
      -- Most releases leave nothing: every item has its record.
      if redis.call('HLEN', o) < len then
        local settled = settled_set(n)
        for l = 0, len - 1 do -- handed back: runs again with the next claim
          if not settled[l] then redis.call('ZADD', w, NOW, l) end
        end
      end
      set_running(n, 0)
    end
    redis.call('HSET', CHUNKS, n, 'd')
    redis.call('ZREM', LEASES, lease_member(n))
    local due = next_due(n)
    if due then chunk_job(n, 't', due) end
  elseif held and in_flight >= 0 and running_of(n) > 0 then
    set_started(n, in_flight)
  end
end

local state_after = settle()
return {state_after, next_due(n) or false, held and 1 or 0, ended_now}
