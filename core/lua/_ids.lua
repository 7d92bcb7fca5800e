-- Prelude of the scripts that write a chunk of an upload (stage_chunk.lua and
-- append_chunk.lua; core/scripts.py prepends it).
-- file_ids(ids_key, ids, first): checks the chunk's custom_ids (`ids`, in order; `first`
-- the global index of its first item) against those in the batch's ids hash and among
-- themselves, then files them there (custom_id -> global index). Returns nil when filed,
-- or {position in this chunk, global index of the first use} for the first duplicate,
-- having written nothing.
local function file_ids(ids_key, ids, first)
  -- Every id is checked before any is written; slices because unpack() is bounded.
  local seen = {}
  for from = 1, #ids, 1000 do
    local to = math.min(from + 999, #ids)
    local known = redis.call('HMGET', ids_key, unpack(ids, from, to))
    for j = 1, #known do
      local i = from + j - 1
      local prev = known[j] or seen[ids[i]]
      if prev then return {i - 1, tonumber(prev)} end
      seen[ids[i]] = first + i - 1
    end
  end
  for from = 1, #ids, 500 do
    local pairs_ = {}
    for i = from, math.min(from + 499, #ids) do
      pairs_[#pairs_ + 1] = ids[i]
      pairs_[#pairs_ + 1] = first + i - 1
    end
    redis.call('HSET', ids_key, unpack(pairs_))
  end
  return nil
end
