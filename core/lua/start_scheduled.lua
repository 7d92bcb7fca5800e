-- Start a scheduled batch whose start time has come (docs/design.md, "Schedules"): take it
-- out of the scheduled zset and enqueue its first chunk jobs, as a commit does for a
-- batch that starts at once (each claim of a fresh chunk enqueues the next). A batch
-- cancelled or deleted meanwhile is only taken out; a paused one gets its jobs too, and
-- their claims park them until ResumeBatch.
-- KEYS[12]: the scheduled zset (batch_id -> start time, ms)
-- ARGV[OWN_ARG]: the dispatch window (chunk jobs enqueued at once)
-- Returns 1 when it enqueued the batch's jobs, else 0 (not due, gone or finished).
local SCHEDULED = KEYS[12]
local due = redis.call('ZSCORE', SCHEDULED, BATCH)
if not due or tonumber(due) > NOW then return 0 end
redis.call('ZREM', SCHEDULED, BATCH)
local m = redis.call('HMGET', META, 'state', 'chunks', 'prio', 'cursor')
if not m[1] then return 0 end
local state = tonumber(m[1])
if state ~= QUEUED and state ~= PAUSED then return 0 end
local cursor = tonumber(m[4] or '0')
local window = math.min(math.max(tonumber(ARGV[OWN_ARG]), 1), tonumber(m[2]))
if cursor >= window then return 0 end
local at = tenant_time(window - cursor, m[3])
for n = cursor, window - 1 do
  enqueue_due(BATCH, n, 'q', dispatch_score(m[3], at + n - cursor))
end
redis.call('HSET', META, 'cursor', window)
return 1
