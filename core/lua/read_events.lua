-- Read a tenant's batch events after a cursor (WatchBatches; docs/design.md, "Batch events").
-- KEYS[1]: the tenant's event stream
-- ARGV: cursor (a stream id; '' for the stream's last id, that is, from now; '0-0' for
--       the oldest event retained), the most entries to return
-- Returns {'ok', position, entries}: entries (XRANGE's) after the cursor, and the position
-- read up to (the last entry's id, else the cursor, or the last id for ''); {'trimmed', id}
-- when the cursor's own event was trimmed, so that those after it may have been too (id:
-- the oldest retained, '0-0' for none); {'ahead', id} for
-- a cursor past the stream's last id (id: it, '0-0' without a stream): the stream it came
-- from is gone (Redis was emptied) or it was never one.
local STREAM = KEYS[1]
local cursor, count = ARGV[1], tonumber(ARGV[2])

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end

local last = '0-0'
if redis.call('EXISTS', STREAM) == 1 then
  local info = redis.call('XINFO', 'STREAM', STREAM)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
if cursor == '' then return {'ok', last, {}} end
if before(last, cursor) then return {'ahead', last} end
if cursor ~= '0-0' then
  -- Trimming takes the oldest entries first (XADD MAXLEN): the cursor's event is gone
  -- when it is older than the oldest retained, or when none is left.
  local oldest = redis.call('XRANGE', STREAM, '-', '+', 'COUNT', 1)[1]
  if not oldest and last ~= '0-0' then return {'trimmed', '0-0'} end
  if oldest and before(cursor, oldest[1]) then return {'trimmed', oldest[1]} end
end
local entries = redis.call('XRANGE', STREAM, '(' .. cursor, '+', 'COUNT', count)
local position = cursor
if #entries > 0 then position = entries[#entries][1] end
return {'ok', position, entries}
