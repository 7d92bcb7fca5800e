-- Prelude (core/scripts.py prepends it): enqueueing ARQ chunk jobs from a script, in the
-- format batchd.core.jobs writes (tests/core/test_jobs.py holds the two, and ARQ's own
-- enqueue_job, to the same bytes).
--
-- make_enqueue(queue, job key prefix, function name, expiry ms, now ms) returns two
-- functions; `queue` is a function returning the queue key (a batch's queue is its
-- handler's, read only when a job is written):
-- enqueue(batch_id, chunk, tag, score): chunk `chunk`'s job to run at `score` (ms; not
--   before now), with id `<batch_id>:<chunk>:<tag><score>`; the job key expires `expiry`
--   after the score;
-- enqueue_due(batch_id, chunk, tag, score): for a score that may be in the past (a
--   priority dispatch): the job key expires `expiry` from now, and the id is
--   `<batch_id>:<chunk>:<tag>` — one per tag and chunk, so a chunk is dispatched once
--   per tag.
-- Both write what ArqRedis.enqueue_job(..., _job_id=id, _defer_until=score) writes — SET
-- arq:job:<id> PX ..., then ZADD queue — and, like it, leave an existing job of that id
-- alone. They return the job id.
local function make_enqueue(queue, job_prefix, job_function, job_expiry, now)
  -- serialize_job's {'t': None, 'f': name, 'a': [batch_id, chunk], 'k': {}, 'et': now}
  local function payload(batch_id, chunk)
    return '\133' .. cmsgpack.pack('t') .. '\192'
      .. cmsgpack.pack('f', job_function, 'a') .. '\146'
      .. cmsgpack.pack(batch_id, tonumber(chunk), 'k') .. '\128'
      .. cmsgpack.pack('et', now)
  end
  local function write(id, batch_id, chunk, score, ttl)
    local key = job_prefix .. id
    if redis.call('EXISTS', key) == 1 then return id end
    redis.call('SET', key, payload(batch_id, chunk), 'PX', string.format('%d', ttl))
    redis.call('ZADD', queue(), string.format('%d', score), id)
    return id
  end
  local function enqueue(batch_id, chunk, tag, score)
    score = math.max(tonumber(score), now)
    local id = batch_id .. ':' .. chunk .. ':' .. tag .. string.format('%d', score)
    return write(id, batch_id, chunk, score, score - now + job_expiry)
  end
  local function enqueue_due(batch_id, chunk, tag, score)
    return write(batch_id .. ':' .. chunk .. ':' .. tag, batch_id, chunk, score, job_expiry)
  end
  return enqueue, enqueue_due
end
