"""Free TCP ports on the loopback interface.

The OS picks the port (bind to port 0), so two runs never agree on a fixed number. The port is
free when this returns, not when the caller binds it: whoever binds it later must treat "address
already in use" as a lost race and ask again (see `PORT_ATTEMPTS`).
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"

# How many times a caller should ask for a new port after losing the race for one.
PORT_ATTEMPTS = 5


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that nobody listens on right now, chosen by the OS."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
