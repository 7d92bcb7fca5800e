"""Loopback port helpers."""

from __future__ import annotations

import socket


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on host a moment ago.

    Another process can still take it before the caller binds it; code that can
    bind port 0 itself (grpc.aio servers) should do that instead.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
