-- Takes up to `want` start permits from every bucket of a list at once (an item starts
-- only with a permit of each). Tokens are consumed when granted.
-- KEYS: the buckets
-- ARGV: now (ms; '': Redis' clock), want, used (starts made during the caller's last
--       free period beyond the `want` it was granted, for the observed rate), ok (items
--       the caller saw end without a slow-down since its last call), then per bucket:
--       configured rate (items/s, 0: none), burst (0: max(1, rate / 10)), shared (1: a
--       key, 0: a batch's)
-- Returns {granted, wait_ms, free_ms, effective rate (string, 0: unlimited), now_ms}:
-- - every bucket unlimited: granted = want (counted as started), free_ms = FREE_MS
--   (start freely that long, and report the starts beyond `want` with the next call);
-- - else, with block = max(1, rate * BLOCK) of the slowest bucket and need = min(want,
--   block, capacities): granted = min(need, tokens) now (wait_ms 0) when every bucket
--   has `need` tokens; or `need` reserved when they all will within RESERVE_MS — the
--   caller may use them only after wait_ms (so several workers asking at once each get
--   a block, one after the other, in one call each); otherwise granted = 0 and wait_ms
--   says when to ask again (when a reservation will do). want = 0 only reads the rate.
local now = clock(ARGV[1])
local want, used, ok = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local buckets, limited = {}, {}
local slowest = 0
for i, key in ipairs(KEYS) do
  local at = 2 + 3 * i
  local b = load(key, tonumber(ARGV[at]), ARGV[at + 2] == '1', now)
  b.burst = tonumber(ARGV[at + 1])
  b.rate = rate_of(b, now)
  if used > 0 or ok > 0 then count(b, used, now, ok) end
  buckets[i] = b
  if b.rate > 0 then
    limited[#limited + 1] = b
    if slowest == 0 or b.rate < slowest then slowest = b.rate end
  end
end
local function reply(granted, wait_ms, free_ms)
  return {granted, wait_ms, free_ms, string.format('%.6f', slowest), string.format('%.3f', now)}
end
if want <= 0 and used <= 0 and ok <= 0 then return reply(0, 0, 0) end
if #limited == 0 then
  for _, b in ipairs(buckets) do
    count(b, want, now)
    save(b)
  end
  return reply(want, 0, FREE_MS)
end
local block = math.max(1, math.floor(slowest * BLOCK))
local need = math.min(want, block)
local avail, wait = math.huge, 0
for _, b in ipairs(limited) do
  local cap = capacity(b, b.rate, b.burst)
  refill(b, b.rate, cap, now)
  need = math.min(need, cap)
  avail = math.min(avail, math.floor(b.tok + 1e-9))
end
for _, b in ipairs(limited) do
  if b.tok + 1e-9 < need then wait = math.max(wait, (need - b.tok) * 1000 / b.rate) end
end
local granted = 0
if want > 0 and (wait == 0 or wait <= RESERVE_MS) then
  -- Now (as many as there are, up to a block), or a block reserved: its tokens accrue
  -- within `wait`, and the caller starts nothing with them before.
  if wait == 0 then granted = math.min(need, avail) else granted = need end
  for _, b in ipairs(limited) do b.tok = b.tok - granted end
end
for _, b in ipairs(buckets) do
  if granted > 0 then count(b, granted, now) end
  save(b)
end
if granted == 0 then wait = math.max(1, wait - RESERVE_MS) end  -- when a reservation will do
return reply(granted, math.ceil(wait), 0)
