"""A counting reverse proxy on 127.0.0.1: it forwards every HTTP request and websocket byte
to a server unchanged and counts them (requests by method and path template, websocket
connections, text frames, events by name), so that what a client sends can be counted from
outside the client: the real Prefect client (bench.conformance.real_client) and the emulation alike.

HTTP is parsed with h11; after a websocket upgrade the stream is relayed byte for byte and a
copy of what the client sends is parsed by websockets' sans-IO protocol, with the compression
the server accepted. Counting never breaks the relay: what cannot be parsed is a problem noted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import h11
from pydantic import BaseModel, Field
from websockets.exceptions import InvalidHandshake
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Opcode
from websockets.headers import parse_extension
from websockets.protocol import Protocol, Side

from bench.core.ports import LOOPBACK

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_CHUNK = 65536
_PROXY_STOP_TIMEOUT_S = 10.0


class TrafficCounts(BaseModel):
    """What a client sent through `counting_proxy`, counted from outside the client."""

    requests: dict[str, int] = Field(
        default_factory=dict,
        description="HTTP requests by method and path template, e.g. "
        "'POST /api/flow_runs/{id}/set_state' (UUIDs replaced by {id}, no query string)",
    )
    errors: dict[str, int] = Field(
        default_factory=dict,
        description="answers with status >= 400 by request and status, e.g. 'GET /api/x 404' "
        "(502: the proxy could not reach the server)",
    )
    websockets: dict[str, int] = Field(
        default_factory=dict, description="websocket connections the server accepted, by path"
    )
    frames: dict[str, int] = Field(
        default_factory=dict,
        description="websocket frames the client sent, by path and opcode "
        "('/api/events/in text', '/api/events/in ping')",
    )
    messages: dict[str, int] = Field(
        default_factory=dict,
        description="websocket text messages the client sent, by their 'event' name or 'type' "
        "('prefect.task-run.Completed', 'auth')",
    )
    problems: list[str] = Field(default_factory=list, description="what could not be counted")


class TrafficCounter:
    """The counts of a running proxy: written by its thread, read with `snapshot()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        kinds = set(TrafficCounts.model_fields) - {"problems"}
        self._counts = {kind: Counter[str]() for kind in kinds}
        self._problems: list[str] = []

    def add(self, kind: str, key: str) -> None:
        """Count one `key` of `kind` (a TrafficCounts field)."""
        with self._lock:
            self._counts[kind][key] += 1

    def problem(self, text: str) -> None:
        """Note something the proxy could not count or forward (once per text)."""
        with self._lock:
            if text not in self._problems:
                self._problems.append(text)

    def snapshot(self) -> TrafficCounts:
        """The counts so far; final once the proxy has stopped."""
        with self._lock:
            counts = {kind: dict(sorted(c.items())) for kind, c in self._counts.items()}
            return TrafficCounts(**(counts | {"problems": list(self._problems)}))


def path_template(target: str) -> str:
    """A request target as a template: the query string dropped, each UUID segment `{id}`."""
    path = target.split("?", 1)[0]
    return "/".join("{id}" if _UUID.match(part) else part for part in path.split("/"))


@contextmanager
def counting_proxy(upstream: str) -> Iterator[tuple[str, TrafficCounter]]:
    """A reverse proxy on 127.0.0.1 in front of `upstream` (an API base URL such as
    http://127.0.0.1:4200/api) that forwards every request and websocket byte unchanged and
    counts them. Yields the proxy's base URL (same API path) and its counter; stops at exit.

    HTTP is read with h11, one server connection per client connection, kept alive as long
    as the client keeps its own. An accepted websocket upgrade is relayed byte for byte, and a
    copy of what the client sends is parsed by the sans-IO protocol of `websockets`, with the
    compression the server accepted, to count its frames and messages.
    """
    parts = urlsplit(upstream)
    counter = TrafficCounter()
    # bound here, on a port the OS chose: nobody can take it between the choice and the use
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]
    proxy = _Proxy((parts.hostname or LOOPBACK, parts.port or 80), counter)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="counting-proxy", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(listener), loop).result(timeout=10)
        yield f"http://{LOOPBACK}:{port}{parts.path.rstrip('/')}", counter
    finally:
        with contextlib.suppress(Exception):
            stopping = asyncio.run_coroutine_threadsafe(proxy.stop(), loop)
            stopping.result(timeout=_PROXY_STOP_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_PROXY_STOP_TIMEOUT_S)
        if not thread.is_alive():
            loop.close()
        listener.close()


async def _next_event(http: h11.Connection, reader: asyncio.StreamReader) -> Any:
    """The next h11 event of a connection, reading from the network as it needs."""
    while True:
        event = http.next_event()
        if event is not h11.NEED_DATA:
            return event
        http.receive_data(await reader.read(_CHUNK))


async def _pipe(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    observe: Callable[[bytes], None] | None,
) -> None:
    """Copy bytes until the source ends, then half-close the sink, as TCP would."""
    with contextlib.suppress(OSError):
        while data := await source.read(_CHUNK):
            if observe is not None:
                observe(data)
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()


class _Upstream:
    """One connection to the server, speaking HTTP/1.1 as h11's client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.http = h11.Connection(h11.CLIENT)


class _Proxy:
    def __init__(self, upstream: tuple[str, int], counter: TrafficCounter) -> None:
        self.upstream, self.counter = upstream, counter
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[Any]] = set()

    async def start(self, listener: socket.socket) -> None:
        self.server = await asyncio.start_server(self.serve, sock=listener)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.connections:
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: its requests, one after the other, then maybe a websocket."""
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        connection = _Connection(self, reader, writer)
        try:
            await connection.run()
        except (h11.ProtocolError, OSError) as exc:
            self.counter.problem(f"a connection failed: {exc!r}")
        except asyncio.CancelledError:
            # stop() cancels what is still open; ended normally, or Python 3.11's start_server
            # logs the cancellation as an error (task.exception() raises it there)
            pass
        finally:
            connection.close()
            self.connections.discard(task)


class _Connection:
    """A client connection and the server connection its requests go to."""

    def __init__(
        self, proxy: _Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy, self.counter = proxy, proxy.counter
        self.reader, self.writer = reader, writer
        self.http = h11.Connection(h11.SERVER)
        self.upstream: _Upstream | None = None

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.writer.close()
        self.writer.close()

    async def run(self) -> None:
        while isinstance(request := await _next_event(self.http, self.reader), h11.Request):
            body = b""
            while not isinstance(
                part := await _next_event(self.http, self.reader), h11.EndOfMessage
            ):
                body += part.data
            path = path_template(request.target.decode("latin-1"))
            key = f"{request.method.decode()} {path}"
            self.counter.add("requests", key)
            head = await self.send_upstream(request, body, key)
            if head is None or not await self.answer(head, key, path):
                return
            if not (self.http.our_state is self.http.their_state is h11.DONE):
                return  # the client or we said Connection: close
            self.http.start_next_cycle()
            upstream = self.upstream
            if (
                upstream is not None
                and upstream.http.our_state is upstream.http.their_state is h11.DONE
            ):
                upstream.http.start_next_cycle()  # kept alive, as the server said
            elif upstream is not None:
                upstream.writer.close()
                self.upstream = None

    async def send_upstream(self, request: h11.Request, body: bytes, key: str) -> Any:
        """Send the request to the server; the head of its answer, or None (answered 502)."""
        if self.upstream is not None and self.upstream.reader.at_eof():
            self.upstream.writer.close()  # the server closed the idle connection
            self.upstream = None
        try:
            if self.upstream is None:
                self.upstream = _Upstream(*await asyncio.open_connection(*self.proxy.upstream))
            http = self.upstream.http
            head = h11.Request(
                method=request.method, target=request.target, headers=request.headers.raw_items()
            )
            data = http.send(head) + (http.send(h11.Data(data=body)) if body else b"")
            self.upstream.writer.write(data + http.send(h11.EndOfMessage()))
            await self.upstream.writer.drain()
            answer = await _next_event(http, self.upstream.reader)
            while isinstance(answer, h11.InformationalResponse) and answer.status_code != 101:
                answer = await _next_event(http, self.upstream.reader)  # e.g. 100 Continue
            if not isinstance(answer, h11.Response | h11.InformationalResponse):
                raise ConnectionResetError("the server closed the connection without answering")
            return answer
        except (OSError, h11.ProtocolError) as exc:
            if self.upstream is not None:
                self.upstream.writer.close()
                self.upstream = None
            # the client retries a 502 (the Prefect client does), as it would a reset
            self.counter.add("errors", f"{key} 502")
            self.counter.problem(f"{key}: the server did not answer ({exc!r})")
            no_body = [("content-length", "0")]
            self.writer.write(self.http.send(h11.Response(status_code=502, headers=no_body)))
            self.writer.write(self.http.send(h11.EndOfMessage()))
            return None

    async def answer(self, head: Any, key: str, path: str) -> bool:
        """Forward the server's answer to the client; whether the connection goes on."""
        assert self.upstream is not None
        if head.status_code >= 400:
            self.counter.add("errors", f"{key} {head.status_code}")
        if isinstance(head, h11.Response) and head.http_version != b"1.1":
            # h11 answers in HTTP/1.1 only: an HTTP/1.0 server's answer (python -m http.server)
            # is relayed as one, framed as h11 frames it for the client
            head = h11.Response(
                status_code=head.status_code, headers=head.headers.raw_items(), reason=head.reason
            )
        self.writer.write(self.http.send(head))
        if head.status_code == 101:
            await self.relay_websocket(path, head)
            return False
        while not isinstance(
            part := await _next_event(self.upstream.http, self.upstream.reader), h11.EndOfMessage
        ):
            self.writer.write(self.http.send(part))
            await self.writer.drain()
        self.writer.write(self.http.send(part))
        await self.writer.drain()
        return True

    async def relay_websocket(self, path: str, accepted: h11.InformationalResponse) -> None:
        """Relay an upgraded connection byte for byte, counting what the client sends."""
        assert self.upstream is not None
        self.counter.add("websockets", path)
        frames = _FrameCounter(path, accepted.headers.raw_items(), self.counter)
        from_client, _ = self.http.trailing_data
        from_server, _ = self.upstream.http.trailing_data
        frames.feed(from_client)
        self.upstream.writer.write(from_client)
        self.writer.write(from_server)
        await asyncio.gather(
            _pipe(self.reader, self.upstream.writer, frames.feed),
            _pipe(self.upstream.reader, self.writer, None),
        )


def _extensions_of_server(headers: Sequence[tuple[bytes, bytes]]) -> list[Extension]:
    """The extensions the server accepted (its 101 answer), as the server applies them to
    what the client sends: the client's view of each, negotiated as websockets' client does
    it by default (the Prefect client's), mirrored."""
    extensions: list[Extension] = []
    for name, value in headers:
        if name.lower() != b"sec-websocket-extensions":
            continue
        for extension, params in parse_extension(value.decode("latin-1")):
            if extension != PerMessageDeflate.name:
                raise InvalidHandshake(f"unknown extension {extension}")
            client = ClientPerMessageDeflateFactory().process_response_params(params, extensions)
            extensions.append(
                PerMessageDeflate(
                    remote_no_context_takeover=client.local_no_context_takeover,
                    local_no_context_takeover=client.remote_no_context_takeover,
                    remote_max_window_bits=client.local_max_window_bits,
                    local_max_window_bits=client.remote_max_window_bits,
                )
            )
    return extensions


class _FrameCounter:
    """Parses a copy of what a websocket client sends and counts its frames and messages."""

    def __init__(
        self, path: str, accepted: Sequence[tuple[bytes, bytes]], counter: TrafficCounter
    ) -> None:
        self.path, self.counter = path, counter
        self.parser: Protocol | None = Protocol(Side.SERVER, max_size=None)
        self.text: bytes | None = None  # the text message being assembled from its frames
        try:
            self.parser.extensions = _extensions_of_server(accepted)
        except InvalidHandshake as exc:
            self.give_up(f"cannot read the server's websocket extensions: {exc}")

    def give_up(self, why: str) -> None:
        self.counter.problem(f"{self.path}: frames not counted: {why}")
        self.parser = None

    def feed(self, data: bytes) -> None:
        """Count what `data` completes; never raises: counting must not break the relay."""
        if self.parser is None:
            return
        try:
            self.count(data)
        except Exception as exc:
            self.give_up(repr(exc))

    def count(self, data: bytes) -> None:
        assert self.parser is not None
        self.parser.receive_data(data)
        self.parser.data_to_send()  # the parser's own replies (pongs): the server sends its own
        for frame in self.parser.events_received():
            self.counter.add("frames", f"{self.path} {frame.opcode.name.lower()}")
            if frame.opcode is Opcode.TEXT:
                self.text = bytes(frame.data)
            elif frame.opcode is Opcode.CONT and self.text is not None:
                self.text += bytes(frame.data)
            if frame.fin and self.text is not None and frame.opcode in (Opcode.TEXT, Opcode.CONT):
                self.counter.add("messages", _message_kind(self.text))
                self.text = None
        if self.parser.parser_exc is not None:
            self.give_up(repr(self.parser.parser_exc))


def _message_kind(text: bytes) -> str:
    """An event's name, another message's type ('auth'), or what it is."""
    try:
        message = json.loads(text)
    except ValueError:
        return "(not JSON)"
    if not isinstance(message, dict):
        return "(not a JSON object)"
    return str(message.get("event") or message.get("type") or "(no event or type)")
