"""A scripted HTTP/1.1 server for the engine's tests: a fake, standing in at the boundary of
the servers prefect-bench measures (which it does not own), for answers a real server gives only
under load or faults: 503s with Retry-After, dropped connections, garbage, stalls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

from bench.engine import Target

OK_BODY = b'{"ok": true}'


def _response(status: int, body: bytes = OK_BODY, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


class Server:
    """A small asyncio HTTP/1.1 server in a thread; the path picks the behaviour.

    /ok            200 with Content-Length
    /chunked       200 chunked, in two writes
    /flaky         every 3rd request 503
    /close         200 then closes the connection (Connection: close)
    /drop          every 10th request: close without answering
    /hang          every 20th request: never answered
    /hangall       never answered
    /garbage       every 10th request: not HTTP
    /echo          records the request body, 200
    /stall         blocks the whole server for 1 s once, on the first request after stall_at
    /idle408       200, then 30 ms later an unsolicited 408 and close (an idle timeout)
    /busy          two of every three requests 503 with Retry-After: 0 (a locked database)
    /maintenance   two of every three requests 503 with Retry-After: 0, Prefect-Maintenance
    /broken        every other request: close without answering
    /slow          200 after 0.2 s
    """

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.hits: Counter[str] = Counter()
        self.bodies: list[bytes] = []
        self.stall_at: float | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._never: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self._never is not None
            self._never.set_result(None)
            self._server.close()
            for writer in list(self._writers):
                writer.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def target(self) -> Target:
        return Target("127.0.0.1", self.port)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._never = self._loop.create_future()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                path = lines[0].split(b" ")[1].decode()
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.hits[path] += 1
                if not await self._respond(path, self.hits[path], body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _respond(self, path: str, n: int, body: bytes, writer: asyncio.StreamWriter) -> bool:
        assert self._never is not None
        if path == "/chunked":
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                b'Content-Type: application/json\r\n\r\n5\r\n{"ok"\r\n'
            )
            await writer.drain()
            writer.write(b"7\r\n: true}\r\n0\r\n\r\n")
        elif path == "/flaky":
            writer.write(_response(503 if n % 3 == 0 else 200))
        elif path == "/close":
            writer.write(_response(200, extra=b"Connection: close\r\n"))
            await writer.drain()
            return False
        elif path == "/drop" and n % 10 == 0:
            return False
        elif (path == "/hang" and n % 20 == 0) or path == "/hangall":
            await self._never
            return False
        elif path == "/garbage" and n % 10 == 0:
            writer.write(b"garbage, not HTTP\r\n\r\n")
        elif path in ("/busy", "/maintenance") and n % 3:
            extra = b"Retry-After: 0\r\n"
            if path == "/maintenance":
                extra += b"Prefect-Maintenance: true\r\n"
            writer.write(_response(503, b"locked", extra))
        elif path == "/broken" and n % 2:
            return False
        elif path == "/slow":
            await asyncio.sleep(0.2)
            writer.write(_response(200))
        elif path == "/echo":
            self.bodies.append(body)
            writer.write(_response(200))
        elif path == "/stall":
            if self.stall_at is not None and time.monotonic() >= self.stall_at:
                self.stall_at = None
                time.sleep(1.0)  # blocks the server's event loop: every connection stalls
            writer.write(_response(200))
        elif path == "/idle408":
            writer.write(_response(200))
            await writer.drain()
            await asyncio.sleep(0.03)
            writer.write(_response(408, b"", b"Connection: close\r\n"))
            await writer.drain()
            return False
        else:
            writer.write(_response(200))
        await writer.drain()
        return True
