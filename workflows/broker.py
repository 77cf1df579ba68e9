"""The Redis broker transport, made to survive a message it cannot read.

Kombu's Redis transport pops a message off its list (``BRPOP``) and only then decodes it; a
list item that is not JSON (a corrupted write, another program's data in our database, a
truncated message) raises out of the consumer's event loop and Celery stops the whole worker
with "Unrecoverable error" (found by the chaos suite: one such item in ``orders`` took a
worker down, and a second item the next one). Here the item is set aside instead: pushed onto
``DEAD_LETTERS`` (the newest ``DEAD_LETTERS_KEPT`` kept) for an operator to look at, logged
without its content (it may hold buyer data), and the worker goes on with the next message.

A message that is JSON but not a task is Celery's to handle (it logs and drops it).

And one ``redis.Redis`` client per channel and pool for its plain commands: kombu builds a new
client for every publish and ack (``conn_or_acquire``), and a client's construction (its table
of response callbacks) cost about a third of a publish's CPU (issue 14: 4.8 % of all worker
CPU). A client is safe to share between threads (it takes a connection from the pool per
command); a new pool (kombu replaces it after a connection error) gets a new client.

And made to survive losing Redis twice: when the broker connection breaks, Celery closes the
old connection and, later, its consumer's channel; closing a channel restores its unacked
messages, for which kombu builds a new client from the connection's parameters, which the
closed connection no longer has (``'NoneType' object has no attribute 'hostname'``, an
``AttributeError`` Celery does not expect: "Unrecoverable error", the worker exits; found by
the chaos suite's Redis restarts). Here that is a broker connection error, which Celery
ignores while it closes a dead connection; the unacked messages stay in Redis's ``unacked``
hash, restored by a live worker after the visibility timeout (and by the sweeper).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis.exceptions
import structlog
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

__all__ = ["DEAD_LETTERS", "DEAD_LETTERS_KEPT", "Channel", "Transport"]

log = structlog.get_logger(__name__)

DEAD_LETTERS = "ordersync:dead-letters"
DEAD_LETTERS_KEPT = 1000


def _raw(exc: ValueError) -> str:
    """The undecodable item, from the decoding error (the transport has already popped it)."""
    doc = getattr(exc, "doc", None)  # json.JSONDecodeError
    if isinstance(doc, str):
        return doc
    obj = getattr(exc, "object", None)  # UnicodeDecodeError
    return obj.decode("utf-8", "replace") if isinstance(obj, bytes) else ""


class Channel(kombu_redis.Channel):
    #: (the pool it was made for, the client) for commands that bring no client of their own
    _shared: tuple[Any, Any] | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool, shared = self.pool, self._shared
        if shared is None or shared[0] is not pool:
            shared = self._shared = (pool, self._create_client())
        yield shared[1]

    def _set_aside(self, exc: ValueError) -> None:
        raw = _raw(exc)
        record = dumps({"at": time.time(), "error": type(exc).__name__, "body": raw})
        try:
            with self.conn_or_acquire() as client:
                client.pipeline().lpush(DEAD_LETTERS, record).ltrim(
                    DEAD_LETTERS, 0, DEAD_LETTERS_KEPT - 1
                ).execute()
        finally:
            log.error("broker.unreadable_message", error=type(exc).__name__, size=len(raw),
                      dead_letters=DEAD_LETTERS)  # fmt: skip

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # the connection was closed under this channel
            raise redis.exceptions.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError: popped, not readable
            self._set_aside(exc)
            return True  # consumed: the event loop goes on

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        while True:
            try:
                return super()._get(queue)
            except ValueError as exc:
                self._set_aside(exc)  # and read the next one (Empty ends it)


class Transport(kombu_redis.Transport):
    Channel = Channel
