-- Prelude of the rate-limit scripts (take_permits.lua, slow_down.lua): token buckets
-- with adaptive back-off, shared by every worker. docs/design.md, "Flow control: rates
-- and concurrency", describes them; batchd.core.throttle builds the bucket lists.
--
-- A bucket is a hash: tok (tokens), ts (ms of the last refill), cfg / cfg_at (the
-- configured rate, items/s, 0: none; and when a caller last confirmed it), cut / cut_at
-- / ref (the rate set by the last slow-down, when, and the rate recovery is measured
-- against), hold (ms: no new decrease before it, nor any start: a Retry-After), win /
-- wn / pn (a 1-second window of starts: its start ms, its count, the previous window's
-- count) and ok / pok (the same for items that ended without a slow-down): the observed
-- rates an unlimited bucket is cut from; born (ms: when the bucket was made).
--
-- The effective rate, computed lazily from the stored last decrease (no background job):
--   no slow-down on record      cfg (0: unlimited)
--   after a slow-down at cut_at min(cfg, cut + RECOVER * ref * seconds since cut_at, or
--                               since the end of its Retry-After hold),
--                               ref = cfg; an unconfigured bucket (cfg 0) recovers
--                               against the rate it was cut from (by FLOOR a second
--                               at least), and is unlimited again once back at
--                               FORGET * ref.
local DECREASE = 0.7  -- multiplicative decrease at a slow-down
local RECOVER = 0.05  -- additive increase per second, as a share of ref
local FLOOR = 1.0     -- a slow-down never takes the rate below this (items/s)
local FORGET = 2.0
local BLOCK = 0.05    -- a grant is at most max(1, rate * BLOCK) permits
local FREE_MS = 100   -- an unlimited take lets the caller start freely for this long
local RESERVE_MS = 250 -- a take may reserve a block whose tokens accrue within this
local CFG_MS = 10000  -- a shared key's rate: the lowest a caller confirmed this recently
local KEEP_MS = 3600000 -- an idle bucket goes after this long

local function clock(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local FIELDS = {
  'tok', 'ts', 'cfg', 'cfg_at', 'cut', 'cut_at', 'ref', 'hold', 'win', 'wn', 'pn', 'ok', 'pok',
  'born'
}

-- Loads a bucket; `rate` is the caller's configured rate (0: none). A batch's own bucket
-- (`shared` false) takes it as it is; on a shared key a lower one, or any one once the
-- stored rate went unconfirmed for CFG_MS, becomes the bucket's: the lowest rate of the
-- batches using the key wins.
local function load(key, rate, shared, now)
  local f = redis.call('HMGET', key, unpack(FIELDS))
  local b = {key = key}
  for i, name in ipairs(FIELDS) do b[name] = tonumber(f[i]) end
  b.cfg = b.cfg or 0
  b.cfg_at = b.cfg_at or now
  if not shared or now - b.cfg_at > CFG_MS then b.cfg = 0 end
  if rate > 0 and (b.cfg == 0 or rate <= b.cfg) then
    b.cfg = rate
    b.cfg_at = now
  end
  b.born = b.born or now
  b.win = b.win or now
  b.wn = b.wn or 0
  b.pn = b.pn or 0
  b.ok = b.ok or 0
  b.pok = b.pok or 0
  return b
end

local function save(b)
  local values = {}
  for _, name in ipairs(FIELDS) do
    if b[name] ~= nil then
      values[#values + 1] = name
      values[#values + 1] = string.format('%.17g', b[name])
    end
  end
  redis.call('DEL', b.key)
  redis.call('HSET', b.key, unpack(values))
  redis.call('PEXPIRE', b.key, KEEP_MS)
end

-- The effective rate (items/s, 0: unlimited); drops a slow-down recovered from.
local function rate_of(b, now)
  if b.cut_at then
    local ref = b.ref or b.cfg
    if b.cfg > 0 then ref = b.cfg end
    local step = RECOVER * ref
    if b.cfg == 0 then step = math.max(step, FLOOR) end
    -- No recovery while a Retry-After holds: nothing would tell of an overshoot.
    local since = math.max(b.cut_at, b.hold or 0)
    local r = b.cut + step * math.max(0, now - since) / 1000
    if b.cfg > 0 and r < b.cfg then return r end
    if b.cfg == 0 and r < FORGET * ref then return r end
    b.cut, b.cut_at, b.ref = nil, nil, nil
  end
  return b.cfg
end

-- How many tokens the bucket holds at most: its burst, max(1, rate / 10) when it names
-- none; never more than max(1, rate / 10) while it is slowed down.
local function capacity(b, rate, burst)
  local natural = math.max(1, math.floor(rate / 10))
  if burst <= 0 or b.cut_at then return math.min(natural, burst > 0 and burst or natural) end
  return burst
end

-- Counts `n` starts and `ok` items ended well in the bucket's 1-second window.
local function count(b, n, now, ok)
  local age = now - b.win
  if age >= 1000 then
    if age < 2000 then b.pn, b.pok = b.wn, b.ok else b.pn, b.pok = 0, 0 end
    b.win = now - (age % 1000)
    b.wn, b.ok = 0, 0
  end
  b.wn = b.wn + n
  b.ok = b.ok + (ok or 0)
end

-- (starts, items ended well) per second seen lately: the previous and current windows;
-- and the start rate over the bucket's life if that is shorter (at least 250 ms).
local function observed(b, now)
  count(b, 0, now)
  local span = 1 + (now - b.win) / 1000
  local young = math.max(0.25, math.min(span, (now - b.born) / 1000))
  return (b.pn + b.wn) / span, (b.pok + b.ok) / span, (b.pn + b.wn) / young
end

-- Brings the tokens up to `now` at `rate`, capped at `cap`; a bucket new to limiting
-- starts full.
local function refill(b, rate, cap, now)
  if b.tok == nil or b.ts == nil then
    b.tok = cap
  else
    b.tok = math.min(cap, b.tok + rate * math.max(0, now - b.ts) / 1000)
  end
  b.ts = now
end
