-- The downstream asked to slow down (HTTP 429/503, a handler's SlowDown): the bucket's
-- effective rate drops to max(FLOOR, rate * DECREASE), from its current rate or, for an
-- unlimited bucket, from the rate of items ending well lately (else of starts); and it
-- recovers from there (see _flow.lua; an unlimited bucket's first recovery is measured
-- against its recent start rate). A Retry-After holds off further decreases for that
-- long; at an unlimited bucket's first decrease it also starts nothing for that long
-- (the burst that met the limit is still being counted downstream).
-- A signal is ignored while the last decrease's Retry-After holds, or when it comes from
-- an item started before the last decrease: that decrease already answered it.
-- KEYS: the bucket
-- ARGV: now (ms; '': Redis' clock), configured rate (items/s, 0: none), burst, shared
--       (1: a key, 0: a batch's), the item's start (ms on the same clock; '': unknown),
--       used and ok (the caller's counts not yet reported, as for take_permits),
--       retry after (ms, '': none)
-- Returns {1 if the rate dropped else 0, the effective rate now (string)}
local now = clock(ARGV[1])
local b = load(KEYS[1], tonumber(ARGV[2]), ARGV[4] == '1', now)
local burst = tonumber(ARGV[3])
local started = tonumber(ARGV[5])
local used, ok = tonumber(ARGV[6]), tonumber(ARGV[7])
local pause = tonumber(ARGV[8])
if used > 0 or ok > 0 then count(b, used, now, ok) end
local rate = rate_of(b, now)
if (b.hold and now < b.hold) or (b.cut_at and started and started < b.cut_at) then
  save(b)
  return {0, string.format('%.6f', rate)}
end
local from, ref = rate, b.cfg
if from <= 0 then
  local starts, good, lately = observed(b, now)
  if good > 0 then from = good else from = starts end
  from = math.max(FLOOR, from)
  -- Recovery (of an unconfigured bucket) is measured against the start rate it had: the
  -- rate that ended well is a lagging, low estimate of what the downstream takes.
  ref = math.max(from, lately)
elseif b.cfg <= 0 then
  ref = from
end
if rate > 0 then refill(b, rate, capacity(b, rate, burst), now) else b.tok, b.ts = 0, now end
b.cut = math.max(FLOOR, from * DECREASE)
b.cut_at = now
b.ref = ref
b.tok = math.min(b.tok, capacity(b, b.cut, burst))
b.hold = nil
if pause and pause > 0 then
  pause = math.min(pause, 60000)
  b.hold = now + pause
  -- The first slow-down of an unlimited key comes after a burst the downstream is still
  -- counting: start nothing until its Retry-After. Later ones only cut the rate.
  if rate <= 0 then b.tok = math.min(b.tok, 0) - b.cut * pause / 1000 end
end
save(b)
return {1, string.format('%.6f', b.cut)}
