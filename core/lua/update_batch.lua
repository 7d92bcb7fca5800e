-- Change an unfinished batch's options (docs/design.md, "Flow control: dispatch"): compare and set
-- of the options JSON, and its priority; a new priority moves the batch's dispatched jobs
-- in the queue by the difference (retry and takeover jobs keep their due times).
-- ARGV[OWN_ARG..]: the options JSON read, the new options JSON, the new priority
-- Returns {'ok'}, {'missing'}, {'state', state} (finished or cancelling) or {'conflict'}
-- (the options changed since they were read).
local m = redis.call('HMGET', META, 'state', 'options', 'prio')
if not m[1] then return {'missing'} end
local state = tonumber(m[1])
if state ~= QUEUED and state ~= RUNNING_BATCH and state ~= PAUSED then return {'state', state} end
if m[2] ~= ARGV[OWN_ARG] then return {'conflict'} end
local old, new = tonumber(m[3] or '0'), tonumber(ARGV[OWN_ARG + 2])
redis.call('HSET', META, 'options', ARGV[OWN_ARG + 1], 'prio', new)
if old ~= new then
  local shift = (old - new) * 10000000
  local head = BATCH .. ':'
  local queued = redis.call('ZRANGE', QUEUE(), 0, -1, 'WITHSCORES')
  for i = 1, #queued, 2 do
    local id = queued[i]
    if string.sub(id, 1, #head) == head then
      local rest = string.sub(id, #head + 1)
      if string.match(rest, '^%d+$') or string.match(rest, '^%d+:q$')
          or string.match(rest, '^%d+:p%d+$') then
        redis.call('ZADD', QUEUE(), 'XX', string.format('%d', tonumber(queued[i + 1]) + shift), id)
      end
    end
  end
end
return {'ok'}
