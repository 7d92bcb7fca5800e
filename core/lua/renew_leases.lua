-- Renew the leases of claimed chunks, of any batches, and record their items in flight.
-- KEYS: leases, then per claim: the chunk-states hash and the `started` hash of its batch
-- ARGV: new expiry (ms), then per claim: lease member, chunk, token, items in flight (-1:
--       unchanged since the holder last reported them)
-- A claim holds while its chunk's state is still 'r:<token>' (not taken over, done,
-- expired, cancelled or deleted); its lease is then set to the new expiry, even if the
-- reaper had already dropped it (the reaped chunk's job then finds it held again), and
-- its items in flight are recorded (`started`).
-- Returns 1 (held) or 0 (lost) per claim.
local held = {}
for c = 0, (#KEYS - 1) / 2 - 1 do
  local states, started = KEYS[2 + 2 * c], KEYS[3 + 2 * c]
  local j = 2 + c * 4
  local n, in_flight = ARGV[j + 1], tonumber(ARGV[j + 3])
  if redis.call('HGET', states, n) == 'r:' .. ARGV[j + 2] then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[j])
    if in_flight > 0 then
      redis.call('HSET', started, n, in_flight)
    elseif in_flight == 0 then
      redis.call('HDEL', started, n)
    end
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
