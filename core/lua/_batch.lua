-- Prelude of every per-batch script (after _jobs.lua): the batch's keys, outcome
-- records, running counts, retry sets and the end of a batch. docs/design.md,
-- "Reliability", describes the states these helpers move items between.
--
-- KEYS: meta, chunks (states), running, failed, expired, attempts, ids, deadlines,
--       leases, queue prefix (the batch's queue is it plus its handler's name: only the
--       workers serving the handler read it), batches; a script's own keys follow
--       (KEYS[12] ...)
-- ARGV: batch_id, batch key prefix, now (ms), retention (ms, 0: keep), ARQ job key
--       prefix, job function, job expiry (ms), request key prefix, the global pending
--       counter's key, the tenants' dispatch clocks (hash), the callback outbox (zset,
--       _callbacks.lua), the batch's tenant's event stream, events it keeps (0: none
--       written), the channel batch ends are published on; a script's own arguments
--       follow (ARGV[OWN_ARG] ...)
local META, CHUNKS, RUNNING, FAILED, EXPIRED, ATTEMPTS, IDS, DEADLINES, LEASES, QUEUES, BATCHES =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10],
  KEYS[11]
local BATCH, PREFIX, NOW, RETENTION = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local REQUEST_PREFIX = ARGV[8]
local PENDING_TOTAL = ARGV[9]
local TENANT_CLOCK = ARGV[10]
local CALLBACKS = ARGV[11]
local EVENTS, EVENTS_RETAIN = ARGV[12], tonumber(ARGV[13])
local ENDED = ARGV[14]
-- ARGV[OWN_ARG] is the first of a script's own arguments.
local OWN_ARG = 15
-- The batch's queue: its handler's, read when a script first needs it.
local queue_key = nil
local function QUEUE()
  if not queue_key then queue_key = QUEUES .. (redis.call('HGET', META, 'handler') or '') end
  return queue_key
end
local enqueue, enqueue_due = make_enqueue(QUEUE, ARGV[5], ARGV[6], tonumber(ARGV[7]), NOW)

-- States, as batchd.core.domain numbers them (tests/core/test_lua_states.py checks):
-- ItemState by its name or NAME_ITEM, BatchState by NAME_BATCH or a name only it has.
local PENDING, CANCELLED, EXPIRED_ITEM = 1, 5, 6
local QUEUED, RUNNING_BATCH, CANCELLING, COMPLETED, CANCELLED_BATCH = 1, 2, 3, 4, 6
local PAUSED = 7

-- Not finished: QUEUED, RUNNING, CANCELLING or PAUSED.
local function is_open(state) return state <= CANCELLING or state == PAUSED end

-- Per-chunk keys, as batchd.core.keys builds them.
local function items_key(n) return PREFIX .. 'c:' .. n end
local function outcomes_key(n) return PREFIX .. 'o:' .. n end
local function waiting_key(n) return PREFIX .. 'w:' .. n end
local function lease_member(n) return BATCH .. '/' .. n end
-- SET of the chunks whose job a claim took while the batch was paused: resume re-enqueues them.
local PARKED = PREFIX .. 'parked'
local function chunk_job(n, tag, score) return enqueue(BATCH, n, tag, score) end

local function is_claimed(state) return state ~= false and state ~= nil and string.sub(state, 1, 2) == 'r:' end

-- (global index of the first item, item count) of chunk n
local function span(n, size, total)
  local first = tonumber(n) * size
  return first, math.min(size, total - first)
end

-- An outcome record as codec.decode_outcome reads it:
-- [state, attempts, start_ms, end_ms, output, error_code, error_message]
local function outcome(state, attempts, end_ms, code, message)
  local ended = '\192'
  if end_ms then ended = cmsgpack.pack(end_ms) end
  return '\151' .. cmsgpack.pack(state, attempts) .. '\192' .. ended .. '\192'
    .. cmsgpack.pack(code, message)
end

-- HASH chunk n -> items its holder has in flight, as last reported (the rest of its
-- running[n] are claimed, not started).
local STARTED = PREFIX .. 'started'
local function set_started(n, value)
  if value > 0 then redis.call('HSET', STARTED, n, value) else redis.call('HDEL', STARTED, n) end
end

-- Items of chunk n counted in n_run; setting it moves n_run by the difference. A new
-- count (a claim), or none left, starts with nothing reported in flight (a chunk with
-- none counted never has a STARTED entry, so there is nothing to drop then).
local function running_of(n) return tonumber(redis.call('HGET', RUNNING, n) or '0') end
local function set_running(n, value, keep_started)
  local old = running_of(n)
  if value ~= old then redis.call('HINCRBY', META, 'n_run', value - old) end
  if value == 0 then redis.call('HDEL', RUNNING, n) else redis.call('HSET', RUNNING, n, value) end
  if old > 0 and (value == 0 or not keep_started) then redis.call('HDEL', STARTED, n) end
end

-- Removes chunk n's due retries from its waiting set (they are runnable again).
local function take_due(n)
  redis.call('ZREMRANGEBYSCORE', waiting_key(n), '-inf', NOW)
end

-- Due time (ms) of chunk n's first waiting item, or nil.
local function next_due(n)
  local first = redis.call('ZRANGE', waiting_key(n), 0, 0, 'WITHSCORES')
  if #first == 0 then return nil end
  return tonumber(first[2])
end

-- Local indexes of chunk n with a record or waiting, as a set.
local function settled_set(n)
  local set = {}
  for _, l in ipairs(redis.call('HKEYS', outcomes_key(n))) do set[tonumber(l)] = true end
  for _, l in ipairs(redis.call('ZRANGE', waiting_key(n), 0, -1)) do set[tonumber(l)] = true end
  return set
end

-- Gives item `index` (global) of chunk n a CANCELLED or EXPIRED record carrying its last
-- attempt, if it has none; returns 1 if it had none. Counters are the caller's.
local function close_item(n, first, index, state)
  local raw = redis.call('HGET', ATTEMPTS, index)
  local a = {0, 0, ''}
  if raw then a = cmsgpack.unpack(raw) end
  local new = redis.call('HSETNX', outcomes_key(n), index - first, outcome(state, a[1], NOW, a[2], a[3]))
  redis.call('HDEL', ATTEMPTS, index)
  if new == 1 and state == EXPIRED_ITEM then redis.call('ZADD', EXPIRED, index, index) end
  return new
end

-- close_waiting: closes chunk n's waiting items as `state`; returns how many.
-- close_chunk: closes every item of chunk n without a record as `state` (CANCELLED or EXPIRED):
-- waiting items, and the running ones of a claimed chunk, get a record; the other items
-- of an unclaimed chunk are only counted (the chunk's new state, 'c' or 'x', says what
-- they are). Moves n_run; returns how many items closed (for n_cancel or n_exp).
local function close_waiting(n, first, state)
  local closed = 0
  for _, l in ipairs(redis.call('ZRANGE', waiting_key(n), 0, -1)) do
    closed = closed + close_item(n, first, first + tonumber(l), state)
  end
  redis.call('DEL', waiting_key(n))
  return closed
end

local function close_chunk(n, first, len, state, claimed)
  local closed = close_waiting(n, first, state)
  if claimed then
    local o = outcomes_key(n)
    for l = 0, len - 1 do
      if redis.call('HEXISTS', o, l) == 0 then closed = closed + close_item(n, first, first + l, state) end
    end
  else
    closed = closed + len - redis.call('HLEN', outcomes_key(n))
  end
  set_running(n, 0)
  return closed
end

-- Calls fn on every key of the batch (a chunk's w: key may be missing: no matter).
local function each_batch_key(chunks, fn)
  for _, key in ipairs({META, CHUNKS, RUNNING, FAILED, EXPIRED, ATTEMPTS, IDS}) do fn(key) end
  fn(PARKED)
  fn(STARTED)
  for n = 0, chunks - 1 do
    fn(items_key(n))
    fn(outcomes_key(n))
    fn(waiting_key(n))
  end
end

-- The batch's request key, or nil.
local function request_key()
  local id = redis.call('HGET', META, 'request_id')
  if id and id ~= '' then return REQUEST_PREFIX .. id end
  return nil
end

-- Keeps the global pending counter (items of every batch not yet terminal) in step with
-- this batch: moves it by the change in the batch's terminal counts since last time
-- (`acct` in meta; a batch without it is not counted).
-- A tenant's own counters, beside the global ones (per-tenant quotas): its items not
-- yet terminal (`<pending>:<tenant>`) and its unfinished batches (`<pending>:<tenant>:open`).
local function tenant_counter(suffix)
  return PENDING_TOTAL .. ':' .. (redis.call('HGET', META, 'tenant') or 'default') .. suffix
end

-- Takes `by` off a tenant counter, never below 0: a batch stored before tenants counted
-- in none of them.
local function tenant_decrease(suffix, by)
  local key = tenant_counter(suffix)
  if redis.call('DECRBY', key, by) < 0 then redis.call('SET', key, 0) end
end

local function account()
  local c = redis.call('HMGET', META, 'acct', 'n_ok', 'n_fail', 'n_cancel', 'n_exp')
  if not c[1] then return end
  local done = tonumber(c[2]) + tonumber(c[3]) + tonumber(c[4]) + tonumber(c[5] or '0')
  local delta = done - tonumber(c[1])
  if delta ~= 0 then
    redis.call('HSET', META, 'acct', done)
    redis.call('DECRBY', PENDING_TOTAL, delta)
    tenant_decrease('', delta)
  end
end

-- Priority dispatch (docs/design.md, "Flow control: dispatch"): a chunk job's score is
-- its tenant's dispatch time minus (priority + 1000) * 10^7 ms, so every such job is due
-- at once and a higher priority always comes first; equal priorities interleave by
-- their tenants' dispatch times.
local function dispatch_score(priority, at)
  return at - (tonumber(priority or '0') + 1000) * 10000000
end

-- Fair shares across tenants (start-time fair queuing): each tenant's dispatches take
-- successive milliseconds of its own clock (`count` of them; returns the first), which
-- never lags the stamp of the job at the head of the queue (or now, if that is later or
-- the queue is empty). A tenant with a hundred batches' windows queued has its clock
-- that far ahead of the head; another tenant's next job is stamped at the head, so it
-- goes in ahead of that backlog, and tenants with backlogs alternate.
local function tenant_time(count, priority)
  local tenant = redis.call('HGET', META, 'tenant') or 'default'
  local floor = NOW
  local head = redis.call('ZRANGE', QUEUE(), 0, 0, 'WITHSCORES')
  if head[2] then
    floor = math.min(NOW, tonumber(head[2]) + (tonumber(priority or '0') + 1000) * 10000000)
  end
  local at = math.max(tonumber(redis.call('HGET', TENANT_CLOCK, tenant) or '0'), floor)
  redis.call('HSET', TENANT_CLOCK, tenant, at + count)
  return at + 1
end

-- Chunks that may be dispatched: all of them, but those of a batch that starts early
-- (meta `up`: chunks its upload has appended so far).
local function dispatchable(chunks, up)
  if up then return math.min(tonumber(chunks), tonumber(up)) end
  return tonumber(chunks)
end

-- Enqueues the batch's next chunk not yet in the queue (meta `cursor`), if any: a claim of
-- a fresh chunk calls it, so each batch keeps a small window of jobs in the queue. A
-- chunk not yet appended by an early upload is owed (meta `owed`): append_chunk enqueues
-- it as it comes.
local function dispatch_next()
  local c = redis.call('HMGET', META, 'cursor', 'chunks', 'prio', 'up')
  if not c[1] then return end
  local cursor = tonumber(c[1])
  if cursor >= dispatchable(c[2], c[4]) then
    if cursor < tonumber(c[2]) then redis.call('HINCRBY', META, 'owed', 1) end
    return
  end
  redis.call('HSET', META, 'cursor', cursor + 1)
  enqueue_due(BATCH, cursor, 'q', dispatch_score(c[3], tenant_time(1, c[3])))
end

-- Appends an event to the tenant's stream (WatchBatches; docs/design.md, "Batch events"):
-- `kind`, a BatchEventType name without its prefix, and the batch as it stands now. Only
-- transitions call it, never the record of an item that does not end the batch. Fields
-- as batchd.core.events reads them.
local function batch_event(kind)
  if EVENTS_RETAIN <= 0 then return end
  local m = redis.call('HMGET', META, 'state', 'handler', 'total', 'n_run', 'n_ok', 'n_fail',
    'n_cancel', 'n_exp', 'metadata')
  redis.call('XADD', EVENTS, 'MAXLEN', '~', EVENTS_RETAIN, '*', 'type', kind, 'batch', BATCH,
    'at', NOW, 'state', m[1] or '0', 'handler', m[2] or '', 'total', m[3] or '0',
    'run', m[4] or '0', 'ok', m[5] or '0', 'fail', m[6] or '0', 'cancel', m[7] or '0',
    'exp', m[8] or '0', 'metadata', m[9] or '{}')
end

-- Set by finish: the end this script gave the batch, which the process that ran it logs
-- (batchd.core.batch_end: once per end, whichever of the processes ends it):
-- {state, handler, total, n_ok, n_fail, n_cancel, n_exp, created, started or false, ended}.
-- Every script that may end a batch returns it (false when it did not).
local ended_now = false

-- The batch is over: state, end time, no deadline; every key kept for RETENTION.
local function finish(state)
  redis.call('HSET', META, 'state', state, 'ended', NOW)
  local e = redis.call('HMGET', META, 'handler', 'total', 'n_ok', 'n_fail', 'n_cancel', 'n_exp',
    'created', 'started')
  ended_now = {state, e[1], e[2], e[3], e[4], e[5], e[6] or '0', e[7], e[8], NOW}
  file_callback(META, BATCH, NOW, CALLBACKS, ended_now)
  batch_event('FINISHED')
  redis.call('PUBLISH', ENDED, BATCH)
  redis.call('ZREM', DEADLINES, BATCH)
  tenant_decrease(':open', 1)
  account()
  if RETENTION > 0 then
    local function expire(key) redis.call('PEXPIRE', key, RETENTION) end
    each_batch_key(tonumber(redis.call('HGET', META, 'chunks')), expire)
    local request = request_key()
    if request then expire(request) end
  end
end

-- Ends an unfinished batch once every item is terminal: COMPLETED, or CANCELLED if it
-- was cancelling. Returns the batch state.
local function settle()
  account()
  local c = redis.call('HMGET', META, 'state', 'total', 'n_ok', 'n_fail', 'n_cancel', 'n_exp')
  local state = tonumber(c[1])
  if not is_open(state) then return state end
  local done = tonumber(c[3]) + tonumber(c[4]) + tonumber(c[5]) + tonumber(c[6] or '0')
  if done < tonumber(c[2]) then return state end
  if state == CANCELLING then state = CANCELLED_BATCH else state = COMPLETED end
  finish(state)
  return state
end

-- Runs fn(list) over slices of `list`: unpack() is bounded by the Lua C stack.
local function in_slices(list, size, fn)
  for from = 1, #list, size do fn({unpack(list, from, math.min(from + size - 1, #list))}) end
end

-- Walks the batch's chunks that are neither cancelled ('c') nor expired ('x'), for cancel
-- and expiry: visit(n, first, len, chunk state) returns the chunk's new state ('c',
-- 'x') or nil to leave it; new states are written a block at a time.
local function each_open_chunk(count, size, total, visit)
  local states = {}
  local flat = redis.call('HGETALL', CHUNKS)
  for i = 1, #flat, 2 do states[flat[i]] = flat[i + 1] end
  local marked = {}
  local function flush()
    if #marked > 0 then redis.call('HSET', CHUNKS, unpack(marked)) end
    marked = {}
  end
  for n = 0, count - 1 do
    local key = tostring(n)
    local s = states[key]
    if s ~= 'c' and s ~= 'x' then
      local first, len = span(n, size, total)
      local mark = visit(n, first, len, s)
      if mark then
        marked[#marked + 1] = key
        marked[#marked + 1] = mark
        if #marked >= 1000 then flush() end
      end
    end
  end
  flush()
end

-- A batch whose early upload is still under way, ending before its last item came
-- (cancelled, expired, or its upload broke off): it keeps the items that came, the
-- chunks appended so far (each full but an upload's last), and the rest leave its total
-- and the pending counts. Returns the batch's total and chunks.
local function truncate_upload()
  local m = redis.call('HMGET', META, 'uploader', 'up', 'chunk_size', 'total', 'chunks')
  local total = tonumber(m[4])
  if not m[1] then return total, tonumber(m[5]) end
  local up = tonumber(m[2])
  local came = math.min(up * tonumber(m[3]), total)
  if came < total then
    redis.call('HSET', META, 'total', came, 'chunks', up)
    redis.call('DECRBY', PENDING_TOTAL, total - came)
    tenant_decrease('', total - came)
  end
  return came, up
end

-- Cancels the batch, as cancel_batch.lua describes: returns {state after, ended_now}, the
-- state unchanged (and false) when it was not QUEUED, RUNNING or PAUSED, or nil without
-- the batch.
local function cancel()
  local m = redis.call('HMGET', META, 'state', 'chunk_size')
  if not m[1] then return nil end
  local state = tonumber(m[1])
  if state ~= QUEUED and state ~= RUNNING_BATCH and state ~= PAUSED then return {state, false} end
  local size = tonumber(m[2])
  local total, count = truncate_upload()

  local cancelled = 0
  each_open_chunk(count, size, total, function(n, first, len, s)
    if is_claimed(s) then
      cancelled = cancelled + close_waiting(n, first, CANCELLED)
      return nil
    end
    cancelled = cancelled + close_chunk(n, first, len, CANCELLED, false)
    return 'c'
  end)
  redis.call('DEL', PARKED)

  redis.call('HINCRBY', META, 'n_cancel', cancelled)
  redis.call('HSET', META, 'state', CANCELLING)
  batch_event('CANCEL_REQUESTED')
  local after = settle()
  return {after, ended_now}
end
