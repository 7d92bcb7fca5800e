"""batchd's shared core: domain types, settings, logging, errors and the Redis store.

Both the gRPC edge (`batchd.server`) and the ARQ workers (`batchd.worker`) depend on
this package; it depends on neither of them, and never on protobuf types.
"""
