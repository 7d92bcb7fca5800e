-- Pause a batch (docs/design.md, "Flow control: dispatch"): QUEUED or RUNNING -> PAUSED. Nothing is
-- taken from anyone: a claim of one of its chunks parks the chunk instead of starting it,
-- and holders learn of the pause from the state their next record returns, and hand the
-- rest back (to be parked in turn). Any other state is left as it is (idempotent).
-- Returns the batch state after the call, or nil when there is no such batch.
local state = tonumber(redis.call('HGET', META, 'state'))
if not state then return nil end
if state == QUEUED or state == RUNNING_BATCH then
  redis.call('HSET', META, 'state', PAUSED)
  batch_event('PAUSED')
  return PAUSED
end
return state
