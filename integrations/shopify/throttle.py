"""Shopify's GraphQL cost limit, mirrored on our side as a leaky bucket per shop.

Shopify gives each (app, shop) a bucket of query-cost points (``maximumAvailable``, e.g. 1000)
that refills at ``restoreRate`` points/s. A query is refused with ``THROTTLED`` when its
*requested* cost exceeds what is available; afterwards the difference between requested and
*actual* cost is refunded. Every response reports the bucket in ``extensions.cost``::

    "extensions": {"cost": {"requestedQueryCost": 101, "actualQueryCost": 46,
        "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 954,
                           "restoreRate": 50.0}}}

So we keep the same bucket locally: ``reserve`` before a query says how long to wait until the
requested cost is available (instead of hammering into THROTTLED), and ``observe`` resets it to
Shopify's numbers after every response, which also absorbs other workers and other apps' use.
https://shopify.dev/docs/api/usage/limits#graphql-admin-api-rate-limits

Until the first response the bucket holds a seed: the documented standard-plan numbers, or the
account's ``rate_limits.cost_bucket`` (``maximum``, ``restore_rate``; e.g. Shopify Plus),
which sizes the first queries right. Once Shopify has reported the bucket, its numbers win.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MAXIMUM",
    "DEFAULT_RESTORE_RATE",
    "CostBucket",
    "ThrottleStatus",
    "shared_bucket",
]

#: the documented defaults before the first response tells us the shop's real numbers
DEFAULT_MAXIMUM = 1000.0
DEFAULT_RESTORE_RATE = 50.0


@dataclass(frozen=True)
class ThrottleStatus:
    maximum_available: float
    currently_available: float
    restore_rate: float
    requested: float | None = None
    actual: float | None = None

    @classmethod
    def from_extensions(cls, extensions: Any) -> ThrottleStatus | None:
        """From a response's ``extensions``; None when absent or malformed."""
        if not isinstance(extensions, Mapping):
            return None
        cost = extensions.get("cost")
        if not isinstance(cost, Mapping):
            return None
        status = cost.get("throttleStatus")
        if not isinstance(status, Mapping):
            return None
        try:
            maximum = float(status["maximumAvailable"])
            available = float(status["currentlyAvailable"])
            rate = float(status["restoreRate"])
        except (KeyError, TypeError, ValueError):
            return None
        if maximum <= 0 or rate <= 0:
            return None

        def _num(value: Any) -> float | None:
            try:
                return None if value is None else float(value)
            except (TypeError, ValueError):
                return None

        return cls(
            maximum,
            available,
            rate,
            _num(cost.get("requestedQueryCost")),
            _num(cost.get("actualQueryCost")),
        )


class CostBucket:
    """Thread-safe local copy of one shop's cost bucket."""

    def __init__(
        self,
        maximum: float = DEFAULT_MAXIMUM,
        restore_rate: float = DEFAULT_RESTORE_RATE,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.maximum = maximum
        self.restore_rate = restore_rate
        self._available = maximum  # may go negative: callers already queued for the future
        self._at = clock()
        self.observed = False  # True once a response has told us Shopify's numbers

    def _refill(self) -> None:
        now = self._clock()
        if now > self._at:
            self._available = min(
                self.maximum, self._available + (now - self._at) * self.restore_rate
            )
            self._at = now

    @property
    def available(self) -> float:
        with self._lock:
            self._refill()
            return self._available

    def reserve(self, cost: float) -> float:
        """Take ``cost`` points; returns the seconds to wait before sending (0.0 = now)."""
        with self._lock:
            self._refill()
            # a query can never need more than a full bucket (Shopify refuses it outright)
            needed = min(cost, self.maximum)
            wait = max(0.0, needed - self._available) / self.restore_rate
            self._available -= cost
            return wait

    def observe(self, status: ThrottleStatus) -> None:
        """Shopify's numbers win: they include every other client of this shop."""
        with self._lock:
            self.maximum = status.maximum_available
            self.restore_rate = status.restore_rate
            self._available = min(status.currently_available, status.maximum_available)
            self._at = self._clock()
            self.observed = True

    def seed(self, maximum: float, restore_rate: float) -> None:
        """Assume these numbers until Shopify reports its own (ignored once it has). Points
        already taken stay taken: the capacity changes, not what was used of it."""
        with self._lock:
            if self.observed or (maximum, restore_rate) == (self.maximum, self.restore_rate):
                return
            self._refill()
            self._available += maximum - self.maximum
            self.maximum = maximum
            self.restore_rate = restore_rate


_shared: dict[str, CostBucket] = {}
_shared_lock = threading.Lock()


def shared_bucket(
    shop: str,
    maximum: float = DEFAULT_MAXIMUM,
    restore_rate: float = DEFAULT_RESTORE_RATE,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> CostBucket:
    """The process-wide bucket of one shop (every connector of that shop in this process),
    seeded with ``maximum`` and ``restore_rate`` until Shopify reports its numbers; ``clock``
    only applies when this call creates the bucket."""
    with _shared_lock:
        bucket = _shared.get(shop)
        if bucket is None:
            bucket = _shared[shop] = CostBucket(maximum, restore_rate, clock=clock)
    bucket.seed(maximum, restore_rate)
    return bucket
