"""batchd's gRPC edge: converts and validates requests, then calls the core store.

Proto types stop here; the core speaks dataclasses. Nothing here imports the worker.
"""
