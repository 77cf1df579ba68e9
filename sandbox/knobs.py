"""Fault knobs shared by every simulator: latency, 5xx rate, 429 rate (and its Retry-After),
the next N requests throttled, timeouts, 200 answers whose JSON is cut short; and
``WriteDrops``, the next N answers of a write applied and then dropped (``DroppedConnection``).

A simulator calls ``await knobs.disturb()`` at the top of each handler; it sleeps for the
latency and may return an error response (or hang past the client's timeout) instead of the
real answer. Randomness comes from one seeded ``random.Random`` so runs are reproducible.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

__all__ = ["DroppedConnection", "Knobs", "WriteDrops"]


@dataclass
class Knobs:
    latency_s: float = 0.0
    error_rate: float = 0.0  # fraction of requests answered 500/503
    rate_429: float = 0.0  # fraction of requests answered 429 regardless of the bucket
    timeout_rate: float = 0.0  # fraction of requests that hang for ``timeout_s``
    timeout_s: float = 30.0
    retry_after: str = "1"  # the Retry-After header of a 429
    throttle_next: int = 0  # the next N requests are answered 429, whatever the dice say
    malformed_rate: float = 0.0  # fraction answered 200 with JSON cut short (nothing applied)
    #: operation → how many of its next requests are answered 429 with ``park_retry_after``
    #: (a marketplace that asks for hours; only simulators that name their operations)
    park_operations: dict[str, int] = field(default_factory=dict)
    park_retry_after: str = "7200"
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def disturb(
        self, error_body: dict[str, object] | None = None, *, operation: str | None = None
    ) -> Response | None:
        """None = go on and answer normally; otherwise the response to send instead."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if operation is not None and self.park_operations.get(operation, 0) > 0:
            self.park_operations[operation] -= 1
            refused = self._too_many(error_body)
            refused.headers["Retry-After"] = self.park_retry_after
            return refused
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return self._too_many(error_body)
        roll = self.rng.random()
        if roll < self.timeout_rate:
            await asyncio.sleep(self.timeout_s)
            return JSONResponse({"error": "timeout"}, status_code=504)
        roll -= self.timeout_rate
        if roll < self.rate_429:
            return self._too_many(error_body)
        roll -= self.rate_429
        if roll < self.error_rate:
            return JSONResponse({"errors": "Service Unavailable"}, status_code=503)
        roll -= self.error_rate
        if roll < self.malformed_rate:  # a proxy's broken answer: a 200 whose body is cut short
            return Response(b'{"data": {"orders": [{"id', media_type="application/json")
        return None

    def _too_many(self, error_body: dict[str, object] | None) -> Response:
        return JSONResponse(
            error_body or {"errors": "Too Many Requests"},
            status_code=429,
            headers={"Retry-After": self.retry_after},
        )


class IntendedDrop(ConnectionAbortedError):
    """What ``DroppedConnection`` raises to make the server close the connection mid-answer.
    (An exception class of a simulator's own marks itself with ``intended_drop = True``.)"""

    intended_drop = True


def _not_intended(record: logging.LogRecord) -> bool:
    """uvicorn logs an app's exception with its traceback; a drop we made on purpose is not
    an error of the simulator (any other exception still is)."""
    return not (record.exc_info and getattr(record.exc_info[1], "intended_drop", False) is True)


logging.getLogger("uvicorn.error").addFilter(_not_intended)


class DroppedConnection(Response):
    """Starts a 200 answer, then fails mid-body: the server closes the connection and the
    client sees a protocol error although the request was applied ("apply then drop")."""

    def __init__(
        self, body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__()
        self._payload = body if len(body) > 1 else b'{"dropped": true}'  # never whole at 16
        self._status = 200 if status in (204, 304) else status  # a status that has a body
        self._extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self._status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self._payload)).encode()),
                    *self._extra,
                ],
            }
        )
        cut = min(16, len(self._payload) - 1)  # at least one byte short of the length
        await send({"type": "http.response.body", "body": self._payload[:cut], "more_body": True})
        raise IntendedDrop("sandbox: drop_after_apply (intended)")


class WriteDrops:
    """Apply then drop, for a simulator's writes: the next N answers of a write operation are
    sent as a ``DroppedConnection`` after the write was applied (ledger and all), as when the
    marketplace's answer is lost on the way back. ``arm(n, "op", ...)`` per operation, or
    ``arm(n)`` for the next N writes of any kind; ``dropped`` counts what was dropped."""

    ANY = "*"

    def __init__(self, operations: Iterable[str]) -> None:
        self.operations = frozenset(operations)
        self.pending: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._lock = threading.Lock()

    def arm(self, n: int, *operations: str) -> None:
        unknown = set(operations) - self.operations
        if unknown:
            raise ValueError(f"not a write of this simulator: {sorted(unknown)}")
        with self._lock:
            for operation in operations or (self.ANY,):
                self.pending[operation] = n

    def clear(self) -> None:
        with self._lock:
            self.pending.clear()

    @property
    def total(self) -> int:
        return sum(self.dropped.values())

    def __call__(self, operation: str, response: Response) -> Response:
        """``response`` (the write applied) as it is, or dropped if one is due."""
        if operation not in self.operations or not 200 <= response.status_code < 300:
            return response
        with self._lock:
            due = next((k for k in (operation, self.ANY) if self.pending[k] > 0), None)
            if due is None:
                return response
            self.pending[due] -= 1
            self.dropped[operation] += 1
        return DroppedConnection(bytes(response.body), response.status_code)
