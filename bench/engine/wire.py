"""Request bytes: encoded once, with only the unique token (if any) filled in per request."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from bench.engine.model import UNIQUE_TOKEN, EngineRequest, Target

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _head(method: str, path: str, target: Target) -> bytes:
    if not path.startswith("/"):
        raise ValueError(f"request path must start with '/': {path!r}")
    return (
        f"{method.upper()} {path} HTTP/1.1\r\n"
        f"Host: {target.authority}\r\n"
        "User-Agent: prefect-bench\r\n"
        "Accept: application/json\r\n"
        "Connection: keep-alive\r\n"
    ).encode("latin-1")


def encode_request(method: str, path: str, target: Target, body: bytes | None = None) -> bytes:
    """The bytes of one request (a scenario's step: each is different)."""
    head = _head(method, path, target)
    if body is None and method.upper() not in _BODY_METHODS:
        return head + b"\r\n"
    body = body or b""
    return head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def request_factory(
    request: EngineRequest, target: Target, token_prefix: bytes
) -> Callable[[], bytes]:
    """A callable returning the bytes of the next request.

    Without UNIQUE_TOKEN in the body this is a C-level callable returning the same bytes each
    time. With it, each call substitutes `token_prefix` + a counter for every occurrence of the
    token, so tokens are unique as long as the prefixes are (one per process per measurement).
    """
    head = _head(request.method, request.path, target)
    body = request.body
    if body is None and request.method.upper() not in _BODY_METHODS:
        return itertools.repeat(head + b"\r\n").__next__
    body = body or b""
    head += b"Content-Type: application/json\r\n"
    if UNIQUE_TOKEN not in body:
        payload = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        return itertools.repeat(payload).__next__

    parts = body.split(UNIQUE_TOKEN)
    head += b"Content-Length: "
    counter = itertools.count(1).__next__

    if len(parts) == 2:
        prefix, suffix = parts
        fixed = len(prefix) + len(suffix)

        def next_request() -> bytes:
            token = token_prefix + str(counter()).encode()
            length = str(fixed + len(token)).encode()
            return head + length + b"\r\n\r\n" + prefix + token + suffix

        return next_request

    def next_request_multi() -> bytes:
        payload = (token_prefix + str(counter()).encode()).join(parts)
        return head + str(len(payload)).encode() + b"\r\n\r\n" + payload

    return next_request_multi
