-- Prelude (core/scripts.py prepends it): enqueueing ARQ chunk jobs from a script.
--
-- make_enqueue(queue, job key prefix, function name, expiry extra ms, now ms) returns
-- enqueue(batch_id, chunk, tag, score): chunk `chunk`'s job to run at `score` (ms; not
-- before now), with id `<batch_id>:<chunk>:<tag><score>`. It writes what
-- ArqRedis.enqueue_job(..., _job_id=id, _defer_until=score) writes — SET arq:job:<id>
-- (msgpack, as batchd.core.jobs.serialize) PX score - now + expiry, then ZADD queue —
-- and, like it, leaves an existing job of that id alone. Returns the job id.
local function make_enqueue(queue, job_prefix, job_function, job_expiry, now)
  return function(batch_id, chunk, tag, score)
    score = math.max(tonumber(score), now)
    local id = batch_id .. ':' .. chunk .. ':' .. tag .. string.format('%d', score)
    local key = job_prefix .. id
    if redis.call('EXISTS', key) == 1 then return id end
    -- serialize_job's {'t': None, 'f': name, 'a': [batch_id, chunk], 'k': {}, 'et': now}
    local payload = '\133' .. cmsgpack.pack('t') .. '\192'
      .. cmsgpack.pack('f', job_function, 'a') .. '\146'
      .. cmsgpack.pack(batch_id, tonumber(chunk), 'k') .. '\128'
      .. cmsgpack.pack('et', now)
    redis.call('SET', key, payload, 'PX', string.format('%d', score - now + job_expiry))
    redis.call('ZADD', queue, string.format('%d', score), id)
    return id
  end
end

-- make_enqueue_due(...) (same arguments) returns enqueue_due(batch_id, chunk, tag, score):
-- like enqueue, for a score that may be in the past (a priority dispatch): the job key
-- expires `expiry` ms from now, and the id is `<batch_id>:<chunk>:<tag>` — one per tag
-- and chunk, so a chunk is dispatched once per tag.
local function make_enqueue_due(queue, job_prefix, job_function, job_expiry, now)
  return function(batch_id, chunk, tag, score)
    local id = batch_id .. ':' .. chunk .. ':' .. tag
    local key = job_prefix .. id
    if redis.call('EXISTS', key) == 1 then return id end
    local payload = '\133' .. cmsgpack.pack('t') .. '\192'
      .. cmsgpack.pack('f', job_function, 'a') .. '\146'
      .. cmsgpack.pack(batch_id, tonumber(chunk), 'k') .. '\128'
      .. cmsgpack.pack('et', now)
    redis.call('SET', key, payload, 'PX', string.format('%d', job_expiry))
    redis.call('ZADD', queue, string.format('%d', score), id)
    return id
  end
end
