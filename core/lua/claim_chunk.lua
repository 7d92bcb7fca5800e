-- Hand a chunk to a worker under a lease (docs/design.md, "Reliability").
-- ARGV[OWN_ARG..]: n, token, lease expiry (ms)
-- A chunk is claimable when queued, done ('d': it may have retries or handed-back items
-- again) or claimed under a lease that expired (a takeover). Its due retries become
-- runnable; runnable = items with no record and not waiting. n_run moves by
-- |runnable| - running[n]. Nothing runnable: the chunk is done ('d'), and a job is
-- scheduled for its first retry if it has one. A cancelling batch's chunk is cancelled
-- here instead of handed out; a paused batch's chunk is parked (resume enqueues it again).
-- The first claim of a fresh chunk enqueues the batch's next chunk (dispatch_next).
-- With `next` ('1'), n is ignored: when the batch is the only one with jobs in the queues
-- the worker reads (KEYS[12...]: the queue of every handler it serves; its own running,
-- waiting and retry jobs aside), its next chunk not yet dispatched
-- is claimed, as if its job had been dispatched and run, without the job's trip through a
-- worker's ARQ loop (for a worker that just finished a quick chunk of the batch). Any
-- other batch's job in those queues (or more than NEXT_SCAN jobs in one) means nil: the
-- queues' order — priority, then the dispatch windows' turns — decides, as without `next`.
-- Returns nil (nothing to run), {ended_now} (nothing to run, and the claim ended the
-- batch: the last items of a cancelling batch's dead holder), or
-- {items, handler, options, chunk_size, {runnable local indexes}, {index, attempt, ...}, n,
--  trace or false}
-- where each attempt is the `attempts` entry of a runnable item that has one, and trace
-- the batch's W3C traceparent, if it keeps one.
local n, token, lease_until = ARGV[OWN_ARG], ARGV[OWN_ARG + 1], ARGV[OWN_ARG + 2]
local take_next = ARGV[OWN_ARG + 3] == '1'

local m = redis.call('HMGET', META, 'state', 'handler', 'options', 'chunk_size', 'total', 'trace')
if not m[1] then return nil end
local state = tonumber(m[1])
if not is_open(state) then return nil end
if take_next then
  if state ~= RUNNING_BATCH then return nil end
  local NEXT_SCAN = 64
  local mine = BATCH .. ':'
  -- Any job in another handler's queue is another batch's (an empty queue does not exist).
  local others = {}
  for k = 12, #KEYS do
    if KEYS[k] ~= QUEUE() then others[#others + 1] = KEYS[k] end
  end
  if #others > 0 and redis.call('EXISTS', unpack(others)) > 0 then return nil end
  local jobs = redis.call('ZRANGE', QUEUE(), 0, NEXT_SCAN)
  if #jobs > NEXT_SCAN then return nil end
  for _, id in ipairs(jobs) do
    if string.sub(id, 1, #mine) ~= mine then return nil end
  end
  local c = redis.call('HMGET', META, 'cursor', 'chunks', 'up')
  if tonumber(c[1]) >= dispatchable(c[2], c[3]) then return nil end
  n = c[1]
  redis.call('HSET', META, 'cursor', tonumber(n) + 1)
end
local items = redis.call('GET', items_key(n))
if not items then return nil end

local claimed = redis.call('HGET', CHUNKS, n)
if claimed == 'c' or claimed == 'x' then return nil end
local member = lease_member(n)
if is_claimed(claimed) then
  local expiry = redis.call('ZSCORE', LEASES, member)
  if expiry and tonumber(expiry) > NOW then return nil end -- its holder runs every item
end
if state == PAUSED then
  -- Nothing starts while paused: the chunk waits for resume, which enqueues it again.
  redis.call('SADD', PARKED, n)
  return nil
end

local first, len = span(n, tonumber(m[4]), tonumber(m[5]))
take_due(n)
local settled = settled_set(n)
local runnable = {}
for l = 0, len - 1 do
  if not settled[l] then runnable[#runnable + 1] = l end
end

if state == CANCELLING then
  -- A dead holder's items (cancel turned every unclaimed chunk to 'c'): start none.
  local closed = close_chunk(n, first, len, CANCELLED, true)
  redis.call('HINCRBY', META, 'n_cancel', closed)
  redis.call('HSET', CHUNKS, n, 'c')
  redis.call('ZREM', LEASES, member)
  settle()
  if ended_now then return {ended_now} end
  return nil
end

-- A fresh chunk's first claim keeps the batch's window of queued jobs full (a chunk
-- taken with `next` was beyond it).
if not claimed and not take_next then dispatch_next() end
set_running(n, #runnable)
if #runnable == 0 then
  redis.call('HSET', CHUNKS, n, 'd')
  redis.call('ZREM', LEASES, member)
  local due = next_due(n)
  if due then chunk_job(n, 't', due) end
  return nil
end
redis.call('HSET', CHUNKS, n, 'r:' .. token)
redis.call('ZADD', LEASES, lease_until, member)
if state == QUEUED then
  redis.call('HSET', META, 'state', RUNNING_BATCH, 'started', NOW)
  batch_event('STARTED')
end

local attempts = {}
-- Most batches have no item waiting for another attempt: nothing to look up then.
if redis.call('HLEN', ATTEMPTS) > 0 then
  local indexes = {}
  for i, l in ipairs(runnable) do indexes[i] = first + l end
  in_slices(indexes, 1000, function(slice)
    local found = redis.call('HMGET', ATTEMPTS, unpack(slice))
    for i, raw in ipairs(found) do
      if raw then
        attempts[#attempts + 1] = slice[i]
        attempts[#attempts + 1] = raw
      end
    end
  end)
end
return {items, m[2], m[3], m[4], runnable, attempts, n, m[6]}
