"""The HTTP seam every outside-world client is built on (marketplaces, payments, carriers).

- explicit timeouts; a ``transport`` argument (``httpx.MockTransport`` or respx in tests);
- a rate-limit bucket per (account, operation), waited for before each request;
- non-2xx answers, transport failures and 2xx answers whose JSON does not parse become
  ``domain.errors`` classes;
- a few in-call retries for retryable failures (honouring ``Retry-After``), after which the error
  goes up to the task, which retries with backoff or surfaces the order to staff; a write the
  remote side does not dedupe is sent with ``replay=False``: a broken connection or a timeout
  (the request may have been applied, its answer lost) is raised at once, for the caller to
  read back what was done before it writes again;
- no wait longer than ``max_wait_s`` (``PARK_AFTER_S``) inside a worker: a longer ``Retry-After``
  or rate-limit pause is raised at once as ``RateLimited(retry_after=…)``, and the task parks
  its work in the database until then (``workflows.base``) instead of holding a worker slot.

Headers that carry credentials are never logged; only method, operation, status and duration.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog

from core.settings import get_settings
from domain.errors import (
    IntegrationError,
    RateLimited,
    RetryableError,
    TransportError,
    error_for_status,
)
from integrations.ratelimit import Bucket, MemoryRateLimiter, RateLimiter

__all__ = ["DEFAULT_TIMEOUT", "ApiClient", "parse_retry_after", "parsed_json"]

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(20.0, connect=5.0)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def parsed_json(operation: str, response: httpx.Response) -> httpx.Response:
    """A 2xx JSON answer, parsed once here: a body that is not JSON (cut short by a proxy, an
    HTML error page behind a 200) is an answer lost, a ``TransportError``: retried, and for a
    write that is not replayed (``replay=False``: it was applied) read back by the caller,
    instead of a ``ValueError`` deep in a mapper that would fail the work for good.
    ``response.json()`` then returns what was parsed here (not parsed twice)."""
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not response.content or not (media == "application/json" or media.endswith("+json")):
        return response  # a JSONL export, a PDF label, a feed document: read by their callers
    try:
        parsed = json.loads(response.content)
    except ValueError:
        raise TransportError(
            f"{operation}: HTTP {response.status_code} with a body that is not JSON (cut short)",
            status=response.status_code,
        ) from None
    setattr(response, "json", lambda **_: parsed)  # noqa: B010  (the one parse, kept)
    return response


class ApiClient:
    """Base for the typed clients. Subclasses add auth (``auth_headers``) and operations."""

    #: operation → documented bucket; subclasses fill this from the marketplace's docs
    rate_limits: Mapping[str, Bucket] = {}

    def __init__(
        self,
        base_url: str,
        *,
        account: str = "default",
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limiter: RateLimiter | None = None,
        max_attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        max_wait_s: float | None = None,
    ) -> None:
        self.account = account
        self.limiter: RateLimiter = limiter or MemoryRateLimiter()
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.max_wait_s = get_settings().park_after_s if max_wait_s is None else max_wait_s
        self.http = httpx.Client(base_url=base_url, transport=transport, timeout=timeout)
        for operation, bucket in self.rate_limits.items():
            self.limiter.configure(self.limit_key(operation), bucket)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def limit_key(self, operation: str) -> str:
        return f"{type(self).__name__}:{self.account}:{operation}"

    def auth_headers(self) -> dict[str, str]:
        return {}

    def wait(self, seconds: float, operation: str) -> None:
        """Sleep ``seconds`` before the next request of ``operation``, or, past ``max_wait_s``,
        raise ``RateLimited`` with that delay for the task to wait outside the worker."""
        if seconds > self.max_wait_s:
            raise RateLimited(
                f"{operation}: must wait {seconds:.0f}s, longer than a worker waits",
                retry_after=seconds,
            )
        if seconds > 0:
            self.sleep(seconds)

    def observe(self, operation: str, response: httpx.Response) -> None:
        """Hook: correct the bucket from the response's rate-limit headers."""

    def error_code(self, response: httpx.Response) -> str | None:
        """Hook: the remote error code from an error body, for the message (no PII)."""
        return None

    def request(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        cost: float = 1.0,
        replay: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """``replay=False``: a ``TransportError`` (no answer, or half of one: the request may
        have been applied) is not sent again here; 429s and 5xx answers still are."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._send_once(operation, method, url, cost=cost, **kwargs)
            except RetryableError as exc:
                if attempt >= self.max_attempts or (exc.retry_after or 0) > self.max_wait_s:
                    raise  # the task retries it, or parks it until the Retry-After
                if not replay and isinstance(exc, TransportError):
                    raise  # maybe applied: the caller reads back before writing again
                delay = exc.retry_after
                if delay is None:
                    delay = random.uniform(0, min(30.0, 0.5 * 2**attempt))
                log.info(
                    "http.retry",
                    operation=operation,
                    account=self.account,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=type(exc).__name__,
                )
                self.wait(delay, operation)

    def _send_once(
        self, operation: str, method: str, url: str, *, cost: float, **kwargs: Any
    ) -> httpx.Response:
        key = self.limit_key(operation)
        self.wait(self.limiter.acquire(key, cost), operation)
        headers = {**self.auth_headers(), **kwargs.pop("headers", {})}
        started = time.perf_counter()
        try:
            response = self.http.request(method, url, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise TransportError(f"{operation}: timeout ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransportError(f"{operation}: {type(exc).__name__}") from exc
        log.debug(
            "http.response",
            operation=operation,
            account=self.account,
            method=method,
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        self.observe(operation, response)
        if response.is_success:
            return parsed_json(operation, response)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error: IntegrationError = error_for_status(
            response.status_code,
            f"{operation}: HTTP {response.status_code}",
            code=self.error_code(response),
            retry_after=retry_after,
        )
        if isinstance(error, RateLimited):
            self.limiter.pause(key, retry_after if retry_after is not None else 1.0)
        raise error
