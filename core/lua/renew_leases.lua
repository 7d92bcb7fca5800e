-- Renew the leases of claimed chunks, of any batches, and record their items in flight.
-- KEYS: leases, then per claim: its batch's chunk-states hash, `started` hash and meta
-- ARGV: new expiry (ms), then per claim: lease member, chunk, token, items in flight (-1:
--       unchanged since the holder last reported them)
-- A claim holds while its chunk's state is still 'r:<token>' (not taken over, done,
-- expired, cancelled or deleted); its lease is then set to the new expiry, even if the
-- reaper had already dropped it (the reaped chunk's job then finds it held again), and
-- its items in flight are recorded (`started`).
-- Returns per claim the batch's state if the claim holds (a holder learns of a pause or
-- a cancel this way even before it has outcomes to record), else 0 (lost).
local held = {}
for c = 0, (#KEYS - 1) / 3 - 1 do
  local states, started, meta = KEYS[2 + 3 * c], KEYS[3 + 3 * c], KEYS[4 + 3 * c]
  local j = 2 + c * 4
  local n, in_flight = ARGV[j + 1], tonumber(ARGV[j + 3])
  if redis.call('HGET', states, n) == 'r:' .. ARGV[j + 2] then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[j])
    if in_flight > 0 then
      redis.call('HSET', started, n, in_flight)
    elseif in_flight == 0 then
      redis.call('HDEL', started, n)
    end
    held[#held + 1] = tonumber(redis.call('HGET', meta, 'state') or '0')
  else
    held[#held + 1] = 0
  end
end
return held
