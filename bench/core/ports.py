"""Free TCP ports on the loopback interface, and the retry that choosing one needs.

The OS picks the port (bind to port 0), so two runs never agree on a fixed number. The port is
free when `free_port` returns, not when the caller binds it: whoever binds it later treats
"address already in use" as a lost race and tries again on a new port (`on_free_port`).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import TypeVar

LOOPBACK = "127.0.0.1"
# The only spellings of this machine: any other host, 127.0.0.2 and this machine's own LAN
# address included, is another host (decided on the text, never by a DNS answer).
THIS_MACHINE = frozenset({LOOPBACK, "localhost", "::1"})

# How many ports a start may lose to another program before it gives up.
PORT_ATTEMPTS = 5

T = TypeVar("T")

_PORT_TAKEN = re.compile(r"address already in use|could not create any tcp/ip sockets", re.I)


class PortTaken(Exception):
    """Raised by a start attempt whose port another program took before it could bind it."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that nobody listens on right now, chosen by the OS."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def lost_port_race(log_text: str) -> bool:
    """Whether a server's log says its port was taken before it could bind it."""
    return bool(_PORT_TAKEN.search(log_text))


def on_free_port(
    start: Callable[[int], T],
    what: str,
    error: Callable[[str], Exception],
    attempts: int = PORT_ATTEMPTS,
) -> T:
    """`start(port)` on a free port, again on a new one each time it raises PortTaken.

    After `attempts` lost races, raises `error(message)`; any other exception passes through.
    """
    lost: list[str] = []
    for _ in range(attempts):
        try:
            return start(free_port())
        except PortTaken as exc:
            lost.append(str(exc))
    raise error(f"{what}: another program took its port {attempts} times in a row ({lost[-1]})")
