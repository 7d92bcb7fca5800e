-- Resume a paused batch (docs/design.md, "Flow control: dispatch"): PAUSED -> RUNNING, or QUEUED if
-- nothing of it had started. Every parked chunk gets a job again, at the batch's
-- priority; a batch whose last items finished while paused completes. Any other state is
-- left as it is (idempotent).
-- Returns {state before, state after, ended_now}, or nil when there is no such batch.
local m = redis.call('HMGET', META, 'state', 'started', 'prio')
if not m[1] then return nil end
local state = tonumber(m[1])
if state ~= PAUSED then return {state, state, false} end
local resumed = QUEUED
if m[2] then resumed = RUNNING_BATCH end
redis.call('HSET', META, 'state', resumed)
batch_event('RESUMED')
local parked = redis.call('SMEMBERS', PARKED)
local at = tenant_time(#parked, m[3])
for i, n in ipairs(parked) do
  enqueue_due(BATCH, n, 'p' .. NOW, dispatch_score(m[3], at + i - 1))
end
redis.call('DEL', PARKED)
local after = settle()
return {state, after, ended_now}
