"""One HTTP/1.1 exchange on a kept-alive asyncio connection, with nothing in between: the load
generators of the intake benchmarks (``webhook_intake``, ``burst``) write prebuilt requests
and read the answers themselves, so the client's own cost stays out of the figures."""

from __future__ import annotations

import asyncio

__all__ = ["exchange"]


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Write ``request``, read its answer (status line, headers, a ``Content-Length`` body);
    the status code."""
    writer.write(request)
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(status_line.split()[1])
