"""Restricted Data Tokens (Tokens API 2021-03-01): the access token that unlocks buyer PII.

The Orders API v0 returns an order's ``ShippingAddress`` (name, street lines, phone) and
``BuyerInfo`` (email, name) only to a call made with a Restricted Data Token in
``x-amz-access-token``; with the plain LWA token the address carries City, StateOrRegion,
PostalCode and CountryCode only. ``createRestrictedDataToken`` answers
``{"restrictedDataToken": "Atz.sprdt|...", "expiresIn": 3600}`` for a list of restricted
resources (HTTP method + path + ``dataElements``); an application without the restricted roles
(Direct-to-Consumer Shipping, Tax Invoicing...) gets ``403 Unauthorized``.
https://developer-docs.amazon.com/sp-api/docs/tokens-api-use-case-guide

``RestrictedTokenCache`` keeps one RDT per set of resources until ``refresh_margin`` before it
expires, behind a lock so that a worker's threads share one Tokens API call (its usage plan is
1 request/s, burst 10). When the application is denied, callers get ``None`` (use the LWA token:
orders still map, without PII) and the Tokens API is asked again only after ``denied_ttl``.
Nothing here ever logs a token or a buyer's data.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

__all__ = [
    "DEFAULT_DENIED_TTL",
    "DEFAULT_RDT_MARGIN",
    "ORDER_PII",
    "RestrictedResource",
    "RestrictedTokenCache",
]

log = structlog.get_logger(__name__)

#: ``dataElements`` ordersync needs: the shipping address for labels, the buyer for invoices
ORDER_PII = ("buyerInfo", "shippingAddress")
#: an RDT lives an hour; refresh it well before, so that a getOrders call that first waits for
#: its rate-limit bucket (a minute at the documented 0.0167/s) still sends a valid token
DEFAULT_RDT_MARGIN = dt.timedelta(minutes=5)
#: after a 403 (no PII role), how long to use the LWA token before asking the Tokens API again
DEFAULT_DENIED_TTL = dt.timedelta(minutes=15)


@dataclass(frozen=True)
class RestrictedResource:
    """One ``restrictedResources`` entry of ``createRestrictedDataToken``."""

    method: str
    path: str
    data_elements: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"method": self.method, "path": self.path}
        if self.data_elements:
            body["dataElements"] = list(self.data_elements)
        return body


#: (the RDT, its lifetime in seconds), or None when the application lacks the restricted roles
Fetch = Callable[[tuple[RestrictedResource, ...]], tuple[str, float] | None]


class RestrictedTokenCache:
    """Thread-safe RDTs per set of restricted resources, with a remembered denial."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        account: str = "default",
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        refresh_margin: dt.timedelta = DEFAULT_RDT_MARGIN,
        denied_ttl: dt.timedelta = DEFAULT_DENIED_TTL,
    ) -> None:
        self._fetch = fetch
        self._account = account
        self._clock = clock
        self._margin = refresh_margin
        self._denied_ttl = denied_ttl
        # re-entrant: a fetch goes through the API client, whose hooks may invalidate
        self._lock = threading.RLock()
        #: resources → (RDT, when to fetch a new one)
        self._tokens: dict[tuple[RestrictedResource, ...], tuple[str, dt.datetime]] = {}
        self._denied_until: dt.datetime | None = None
        self.fetches = 0  # Tokens API calls that returned a token (for tests and metrics)

    def __repr__(self) -> str:
        return f"<RestrictedTokenCache account={self._account!r} cached={len(self._tokens)}>"

    @property
    def denied(self) -> bool:
        """True while the last answer was 403 and ``denied_ttl`` has not run out."""
        with self._lock:
            return self._denied_until is not None and self._clock() < self._denied_until

    def invalidate(self) -> None:
        """Forget every cached RDT (SP-API said 401/403: revoked or expired early)."""
        with self._lock:
            self._tokens.clear()

    def token(self, resources: Sequence[RestrictedResource]) -> str | None:
        """An RDT valid for ``resources``, or None: use the LWA token (no PII role)."""
        key = tuple(resources)
        with self._lock:
            now = self._clock()
            if self._denied_until is not None:
                if now < self._denied_until:
                    return None
                self._denied_until = None
            cached = self._tokens.get(key)
            if cached is not None and now < cached[1]:
                return cached[0]
            fetched = self._fetch(key)
            if fetched is None:
                self._denied_until = now + self._denied_ttl
                self._tokens.clear()
                log.warning(
                    "amazon.rdt_denied",
                    account=self._account,
                    fallback="lwa_token",
                    retry_in_s=int(self._denied_ttl.total_seconds()),
                    hint="the app lacks a restricted role: orders arrive without address/buyer",
                )
                return None
            token, lifetime = fetched
            self.fetches += 1
            # drop what expired (per-order RDTs would otherwise pile up)
            self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
            margin = min(self._margin, dt.timedelta(seconds=lifetime / 2))
            self._tokens[key] = (token, now + dt.timedelta(seconds=lifetime) - margin)
            return token
