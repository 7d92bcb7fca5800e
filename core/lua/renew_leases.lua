-- Renew the leases of claimed chunks, of any batches.
-- KEYS: leases, then the chunk-states hash of each claim's batch
-- ARGV: new expiry (ms), then per claim: lease member, chunk, token
-- A claim holds while its chunk's state is still 'r:<token>' (not taken over, done,
-- expired, cancelled or deleted); its lease is then set to the new expiry, even if the
-- reaper had already dropped it (the reaped chunk's job then finds it held again).
-- Returns 1 (held) or 0 (lost) per claim.
local held = {}
for i = 2, #KEYS do
  local j = 2 + (i - 2) * 3
  if redis.call('HGET', KEYS[i], ARGV[j + 1]) == 'r:' .. ARGV[j + 2] then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[j])
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
