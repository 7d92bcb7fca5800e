-- Takes up to `want` start permits from every bucket of a list at once (an item starts
-- only with a permit of each). Tokens are consumed when granted.
-- KEYS: the buckets
-- ARGV: now (ms; '': Redis' clock), want, used (starts made during the caller's last
--       free period beyond the `want` it was granted, for the observed rate), ok (items
--       the caller saw end without a slow-down since its last call), then per bucket: configured rate
--       (items/s, 0: none), burst (0: max(1, rate / 10)), shared (1: a key, 0: a batch's)
-- Returns {granted, wait_ms, free_ms, effective rate (string, 0: unlimited), now_ms}:
-- - every bucket unlimited: granted = want (counted as started), free_ms = FREE_MS
--   (start freely that long, and report the starts beyond `want` with the next call);
-- - else granted = min(want, block, tokens) where block = max(1, rate * BLOCK) of the
--   slowest bucket, when at least min(want, block, capacity) tokens are there; otherwise
--   granted = 0 and wait_ms says when they will be. want = 0 only reads the rate.
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
  local enough = math.min(need, cap)
  avail = math.min(avail, math.floor(b.tok + 1e-9))
  if b.tok + 1e-9 < enough then wait = math.max(wait, (enough - b.tok) * 1000 / b.rate) end
end
local granted = 0
if wait == 0 and want > 0 then
  granted = math.min(need, avail)
  for _, b in ipairs(limited) do b.tok = b.tok - granted end
end
for _, b in ipairs(buckets) do
  if granted > 0 then count(b, granted, now) end
  save(b)
end
return reply(granted, math.ceil(wait), 0)
