"""A TCP proxy on a free loopback port in front of a private Redis, which a test switches
between forwarding and two kinds of network failure:

- `forward`: bytes pass both ways;
- `blackhole`: a silent partition. Connections stay open and new ones are accepted, but
  no byte passes either way (each side's bytes wait in the proxy, as a real network
  holds them until TCP retransmits); `forward` again lets them through;
- `reset`: every connection is closed and new ones are refused, as a host that is down.

It runs in the test's event loop; the processes behind it (workers, servers) reach Redis
through `url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

HOST = "127.0.0.1"
_READ_SIZE = 65536


class Mode(enum.Enum):
    FORWARD = "forward"
    BLACKHOLE = "blackhole"
    RESET = "reset"


class TcpProxy:
    """Forwards connections on `port` to `target_port` (start with `started`)."""

    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.mode = Mode.FORWARD
        self._passing = asyncio.Event()
        self._passing.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_all()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def forward(self) -> None:
        self.mode = Mode.FORWARD
        self._passing.set()

    def blackhole(self) -> None:
        self.mode = Mode.BLACKHOLE
        self._passing.clear()

    def reset(self) -> None:
        self.mode = Mode.RESET
        self._passing.set()  # waiting pipes wake up to find their connection closed
        self._drop_all()

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()  # an RST, not a polite FIN
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is Mode.RESET:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._writers.update((writer, upstream_writer))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await source.read(_READ_SIZE)
                if not data:
                    break
                # Held here while the link is cut; a reset closes the sink meanwhile.
                await self._passing.wait()
                if sink.is_closing():
                    break
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(sink)
            with contextlib.suppress(Exception):
                sink.transport.abort()


@asynccontextmanager
async def proxy_to(port: int) -> AsyncIterator[TcpProxy]:
    """A started proxy in front of `port` on loopback, closed at the end."""
    proxy = TcpProxy(port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
