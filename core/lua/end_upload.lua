-- End an upload that starts early (docs/design.md, "Uploads that start early"): the
-- batch no longer says it is uploading, and leaves the index of early uploads. An upload
-- that ends without its digest broke off: its batch is cancelled (cancel()) in the same
-- call and its request_id freed.
-- KEYS (own): the upload lock, the index of early uploads
-- ARGV (own): the upload's lock token ('': whichever upload the batch has, if its lock
--   has expired: the maintenance sweep); the request digest, kept for replays ('': the
--   upload broke off)
-- Returns {1, ended_now} when it ended the upload, {0, false} when that was not the
-- caller's to do (another token, a lock still held, or no upload under way).
local lock, index = KEYS[12], KEYS[13]
local token, digest = ARGV[OWN_ARG], ARGV[OWN_ARG + 1]
local uploader = redis.call('HGET', META, 'uploader')
if not uploader then
  redis.call('ZREM', index, BATCH)
  return {0, false}
end
local held = redis.call('GET', lock)
if token == '' then
  if held then return {0, false} end
elseif held ~= token or uploader ~= token then
  return {0, false}
end
local broke = digest == ''
if broke then
  local request = request_key()
  if request and redis.call('GET', request) == BATCH then redis.call('DEL', request) end
  cancel()  -- while the batch still says it uploads: it keeps only what came
else
  redis.call('HSET', META, 'digest', digest)
end
redis.call('HDEL', META, 'uploader')
if held then redis.call('DEL', lock) end
redis.call('ZREM', index, BATCH)
return {1, ended_now}
