"""A loopback TCP proxy a test can cut, black-hole and restore: database outages on demand."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream address until told otherwise.

    mode "up": forward; "refuse": close every connection at once (a refused or
    reset connection); "blackhole": keep every connection open but carry nothing,
    and accept new ones that never answer (a silent network).
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "up"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._drop_all()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def cut(self, mode: str = "refuse") -> None:
        self.mode = mode
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._drop_all()

    def restore(self) -> None:
        self.mode = "up"
        self._flowing.set()

    def _drop_all(self) -> None:
        for writer in list(self._pipes):
            writer.close()
        self._pipes.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        if self.mode == "blackhole":
            self._pipes.add(writer)
            with contextlib.suppress(Exception):
                await reader.read()  # hold it open, say nothing
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._pipes.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    await self._flowing.wait()  # a black hole holds the bytes back
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._pipes.discard(writer)
        self._pipes.discard(up_writer)
