"""Local ports for servers started on demand (the embedded Redis, the demo, the test stack)."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for servers started on demand)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
