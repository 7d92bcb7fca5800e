-- Moves chunk jobs from the single queue of earlier versions (`batchd:queue`) to the
-- queue of their batch's handler, keeping their scores; a job of a batch that is gone is
-- dropped (its claim would find nothing). Safe anywhere at once: each job moves once.
-- KEYS: the old queue, the queue prefix
-- ARGV: the meta key of the batch with the empty id (`batchd:b:{}:meta`), at most this
--       many jobs per call
-- Returns the number of jobs taken off the old queue.
local meta_head, meta_tail = string.match(ARGV[1], '^(.*{)(}.*)$')
local jobs = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
for i = 1, #jobs, 2 do
  local id = jobs[i]
  local batch_id = string.match(id, '^([^:]+):')
  local handler = batch_id and redis.call('HGET', meta_head .. batch_id .. meta_tail, 'handler')
  if handler then redis.call('ZADD', KEYS[2] .. handler, jobs[i + 1], id) end
  redis.call('ZREM', KEYS[1], id)
end
return #jobs / 2
