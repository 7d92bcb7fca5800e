-- Drop batches whose meta is gone (retention ran out) from the batch index.
-- KEYS: batches, then the meta key of each batch
-- ARGV: the batch ids, in the order of their meta keys
-- Returns how many were dropped.
local dropped = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    dropped = dropped + redis.call('ZREM', KEYS[1], ARGV[i - 1])
  end
end
return dropped
