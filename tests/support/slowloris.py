"""A slowloris client: the request line and headers a byte at a time, never completed."""

from __future__ import annotations

import select
import socket
import time


def held_open_seconds(host: str, port: int, path: str) -> float | None:
    """Seconds until the server closed a connection whose headers never complete, or None if it held the
    connection for the whole 8 s the client tries."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: slow\r\n".encode())
        for _ in range(40):
            time.sleep(0.2)
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
            if select.select([sock], [], [], 0)[0] and not sock.recv(1024):
                return time.monotonic() - started
    return None
