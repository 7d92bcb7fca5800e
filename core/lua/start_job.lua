-- Starts an ARQ job as arq.Worker.start_jobs does (batchd.worker.arq_worker), in one
-- round trip instead of its WATCH, EXISTS, ZSCORE, MULTI/PSETEX/EXEC and UNWATCH.
-- KEYS[1]: the job's in-progress key, KEYS[2]: its queue.
-- ARGV: job id, now (ms), the in-progress mark's life (ms).
-- Returns the job's score, having marked it in progress; or nil when it is in progress
-- already (another worker started it), no longer queued (done and removed), or queued
-- for later (run again with a delay) — then nothing is written.
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return nil end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
