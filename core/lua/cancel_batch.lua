-- Cancel a batch (docs/design.md, "Reliability"): QUEUED, RUNNING or PAUSED -> CANCELLING.
-- Every waiting retry gets a CANCELLED record; every chunk not claimed becomes 'c', its
-- items without a record counted cancelled; claimed chunks are left to their holders,
-- who cancel what they have not started (or to the claim that takes over from a dead
-- one). CANCELLED at once if nothing is left running. Any other state is returned
-- unchanged (idempotent).
-- Returns {the batch state after the call, ended_now}, or nil when there is no such batch.
return cancel()
