"""Token-bucket rate limiting per (account, operation).

Each marketplace documents a rate (requests per second) and a burst per operation; clients seed
a bucket from those numbers and correct it from response headers (``x-amzn-RateLimit-Limit``,
Shopify's ``throttleStatus``). A 429 drains the bucket and pauses it for ``Retry-After``.

Two implementations of one interface:

- ``MemoryRateLimiter``: one process (tests, the sandbox, a single worker).
- ``RedisRateLimiter``: shared by every worker process on every machine, one Lua script per
  acquire so that check-and-take is atomic.

``acquire`` returns how long the caller must wait before sending (0.0 = now) and has already
taken the token for that moment, so concurrent callers queue up instead of stampeding.

Both keep a little under the limit: they refill at ``HEADROOM`` of the documented rate and add
``MARGIN_S`` to every wait. Without it, client and server buckets drain together after the
burst and the client's request lands a few milliseconds before the server's token: a 429, and
a pause that costs far more than the 3% (measured in ``bench/poll_throughput.py``).

Per-account limits: ``channel_accounts.rate_limits`` overrides the documented buckets of one
account, operation by operation (``parse_rate_limits``, the one place that reads that column;
the README shows the shape). Operations left out keep the documented defaults.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

__all__ = [
    "COST_BUCKET",
    "HEADROOM",
    "MARGIN_S",
    "AccountRateLimits",
    "Bucket",
    "CostLimit",
    "MemoryRateLimiter",
    "RateLimiter",
    "RateLimitsError",
    "RedisRateLimiter",
    "overlay",
    "parse_rate_limits",
]

HEADROOM = 0.97
MARGIN_S = 0.02


@dataclass(frozen=True)
class Bucket:
    rate: float  # tokens added per second
    burst: float  # bucket capacity


@dataclass(frozen=True)
class CostLimit:
    """A query-cost bucket (Shopify GraphQL): ``maximum`` points, refilled at ``restore_rate``/s,
    the names of ``integrations.shopify.throttle.CostBucket``."""

    maximum: float
    restore_rate: float


#: the ``rate_limits`` key of a cost bucket (only on channels that have one)
COST_BUCKET = "cost_bucket"


class RateLimitsError(ValueError):
    """``channel_accounts.rate_limits`` of one account is not valid (the message names the
    account and the key)."""


@dataclass(frozen=True)
class AccountRateLimits:
    """One account's overrides, parsed: only what the account sets, never the defaults."""

    buckets: Mapping[str, Bucket] = field(default_factory=dict)
    cost_bucket: CostLimit | None = None

    def __bool__(self) -> bool:
        return bool(self.buckets) or self.cost_bucket is not None

    def over(
        self, defaults: Mapping[str, Bucket], *, account: str = "", cost_bucket: bool = False
    ) -> dict[str, Bucket]:
        """``defaults`` with this account's buckets put over them, operation by operation.
        ``cost_bucket``: the caller also applies ``self.cost_bucket`` (else it must be None)."""
        try:
            if self.cost_bucket is not None and not cost_bucket:
                raise RateLimitsError(f"rate_limits: no {COST_BUCKET} on this channel")
            return overlay(defaults, self.buckets)
        except RateLimitsError as exc:
            if not account:
                raise
            raise RateLimitsError(f"account {account!r}: {exc}") from None

    def as_json(self) -> dict[str, dict[str, float]]:
        """The ``rate_limits`` column value that parses back to these limits."""
        out = {op: {"rate": b.rate, "burst": b.burst} for op, b in self.buckets.items()}
        if self.cost_bucket is not None:
            out[COST_BUCKET] = {
                "maximum": self.cost_bucket.maximum,
                "restore_rate": self.cost_bucket.restore_rate,
            }
        return out


def overlay(defaults: Mapping[str, Bucket], overrides: Mapping[str, Bucket]) -> dict[str, Bucket]:
    """``defaults`` with ``overrides`` put over them; an operation not in ``defaults`` is an
    error (a typo would otherwise be a limit nobody applies)."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        what = f"rate_limits: unknown operation(s) {', '.join(unknown)}"
        raise RateLimitsError(f"{what} (known: {', '.join(defaults) or 'none'})")
    return {**defaults, **overrides}


_Rate = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
_Capacity = Annotated[float, Field(ge=1, allow_inf_nan=False, strict=True)]


class _BucketSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: _Rate  # tokens per second
    burst: _Capacity  # bucket capacity: at least one request's worth


class _CostBucketSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    maximum: _Capacity  # points the bucket holds
    restore_rate: _Rate  # points per second


def parse_rate_limits(
    raw: Any,
    *,
    account: str,
    operations: Iterable[str],
    cost_bucket: bool = False,
    channel: str = "",
) -> AccountRateLimits:
    """Parse one account's ``rate_limits`` column::

        {"<operation>": {"rate": <per second>, "burst": <tokens>}, ...,
         "cost_bucket": {"maximum": <points>, "restore_rate": <points per second>}}

    ``operations`` are the names the channel's client limits; ``cost_bucket`` only where the
    channel has one. None or ``{}`` = the defaults. Anything else that is not exactly this
    (an unknown key, a missing or extra field, a number that is not positive, a burst or
    maximum below 1) raises ``RateLimitsError`` naming the account and the key.
    """
    where = f"account {account!r}: rate_limits"
    if raw is None:
        return AccountRateLimits()
    if not isinstance(raw, Mapping):
        raise RateLimitsError(f"{where}: expected an object, got {type(raw).__name__}")
    known = list(operations)
    allowed = [*known, COST_BUCKET] if cost_bucket else known
    buckets: dict[str, Bucket] = {}
    cost: CostLimit | None = None
    for key, value in raw.items():
        if key not in allowed:
            what = f"{channel} " if channel else ""
            raise RateLimitsError(
                f"{where}: unknown {what}operation {key!r} (known: {', '.join(allowed)})"
            )
        spec: type[BaseModel] = _CostBucketSpec if key == COST_BUCKET else _BucketSpec
        try:
            parsed = spec.model_validate(value)
        except PydanticValidationError as exc:
            raise RateLimitsError(f"{where}.{key}{_first_error(exc)}") from None
        if isinstance(parsed, _CostBucketSpec):
            cost = CostLimit(parsed.maximum, parsed.restore_rate)
        elif isinstance(parsed, _BucketSpec):
            buckets[key] = Bucket(rate=parsed.rate, burst=parsed.burst)
    return AccountRateLimits(buckets, cost)


def _first_error(exc: PydanticValidationError) -> str:
    """``.field: what is wrong (got …)`` of the first error, for the end of a message."""
    error = exc.errors()[0]
    loc = "".join(f".{part}" for part in error["loc"])
    if error["type"] == "model_type":
        return f"{loc}: expected an object, got {type(error['input']).__name__}"
    shown = "" if error["type"] == "missing" else f" (got {error['input']!r})"
    return f"{loc}: {error['msg']}{shown}"


class RateLimiter(Protocol):
    def configure(self, key: str, bucket: Bucket) -> None: ...

    def acquire(self, key: str, cost: float = 1.0) -> float: ...

    def pause(self, key: str, seconds: float, resume_tokens: float = 0.0) -> None: ...


class MemoryRateLimiter:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        headroom: float = HEADROOM,
        margin_s: float = MARGIN_S,
    ) -> None:
        self._clock = clock
        self._headroom = headroom
        self._margin_s = margin_s
        self._lock = threading.Lock()
        self._buckets: dict[str, Bucket] = {}
        # key → (tokens, at): tokens may go negative = callers already queued for the future
        self._state: dict[str, tuple[float, float]] = {}

    def configure(self, key: str, bucket: Bucket) -> None:
        with self._lock:
            old = self._buckets.get(key)
            self._buckets[key] = bucket
            if old is None:
                self._state[key] = (bucket.burst, self._clock())

    def acquire(self, key: str, cost: float = 1.0) -> float:
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return 0.0
            rate = bucket.rate * self._headroom
            now = self._clock()
            tokens, at = self._state.get(key, (bucket.burst, now))
            if now > at:  # refill up to now; ``at`` in the future means paused until then
                tokens, at = min(bucket.burst, tokens + (now - at) * rate), now
            tokens -= cost
            self._state[key] = (tokens, at)
            wait = max(0.0, at - now) + max(0.0, -tokens) / rate
            return wait + self._margin_s if wait > 0 else 0.0

    def pause(self, key: str, seconds: float, resume_tokens: float = 0.0) -> None:
        """Empty the bucket and hold it for ``seconds`` (after a 429 / throttled answer). A
        window-based limit that opens a whole new window passes ``resume_tokens``; after a 429
        with a guessed wait, 0 keeps one more token interval of distance."""
        with self._lock:
            if key not in self._buckets:
                return
            self._state[key] = (resume_tokens, self._clock() + seconds)


_ACQUIRE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then tokens = burst; at = now end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', at)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 3600)
return tostring(math.max(0, at - now) + math.max(0, -tokens) / rate)
"""

_PAUSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], 'tokens', tonumber(ARGV[2]), 'at', now + tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 3600)
return 1
"""


class RedisRateLimiter:
    """Buckets in Redis (server time, so clocks of worker machines do not matter)."""

    def __init__(
        self,
        redis: Any,
        prefix: str = "ordersync:ratelimit:",
        *,
        headroom: float = HEADROOM,
        margin_s: float = MARGIN_S,
    ) -> None:
        self._headroom = headroom
        self._margin_s = margin_s
        self._redis = redis
        self._prefix = prefix
        self._buckets: dict[str, Bucket] = {}
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._pause = redis.register_script(_PAUSE_LUA)

    def configure(self, key: str, bucket: Bucket) -> None:
        self._buckets[key] = bucket

    def acquire(self, key: str, cost: float = 1.0) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        rate = bucket.rate * self._headroom
        wait = float(self._acquire(keys=[self._prefix + key], args=[rate, bucket.burst, cost]))
        return wait + self._margin_s if wait > 0 else 0.0

    def pause(self, key: str, seconds: float, resume_tokens: float = 0.0) -> None:
        if key in self._buckets:
            self._pause(keys=[self._prefix + key], args=[seconds, resume_tokens])
