"""Login with Amazon (LWA): the refresh-token → access-token exchange every SP-API call needs.

``POST {lwa_url}/auth/o2/token`` with a form body ``grant_type=refresh_token``, ``refresh_token``,
``client_id``, ``client_secret`` answers ``{"access_token", "token_type": "bearer",
"expires_in": 3600, ...}``. The access token goes in the ``x-amz-access-token`` header.
https://developer-docs.amazon.com/sp-api/docs/connecting-to-the-selling-partner-api

The token is cached until ``refresh_margin`` before it expires, behind a lock so that a worker's
threads share one exchange. LWA failures: ``401 invalid_client`` and ``400 invalid_grant`` mean
the credentials are wrong or revoked (``AuthError``, a human must reconnect the account).
Nothing here ever logs or repeats a secret or a token.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import httpx
import structlog

from domain.errors import (
    AuthError,
    IntegrationError,
    PayloadError,
    TransportError,
    error_for_status,
)
from integrations.http import parsed_json

__all__ = ["DEFAULT_LWA_URL", "LwaTokenProvider"]

log = structlog.get_logger(__name__)

DEFAULT_LWA_URL = "https://api.amazon.com"
TOKEN_PATH = "/auth/o2/token"  # noqa: S105 (a URL path, not a secret)
# error codes of RFC 6749 §5.2 that mean "these credentials will never work as they are"
_AUTH_CODES = frozenset({"invalid_client", "invalid_grant", "unauthorized_client"})


class LwaTokenProvider:
    """Thread-safe cache of one LWA access token for one refresh token."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        lwa_url: str = DEFAULT_LWA_URL,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout | float = 20.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        refresh_margin: dt.timedelta = dt.timedelta(seconds=60),
    ) -> None:
        self._form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
            "client_secret": client_secret,
        }
        self._clock = clock
        self._margin = refresh_margin
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._http = httpx.Client(base_url=lwa_url, transport=transport, timeout=timeout)
        self.exchanges = 0  # how many times the token was fetched (for tests and metrics)

    def __repr__(self) -> str:
        return f"<LwaTokenProvider base_url={str(self._http.base_url)!r}>"

    def close(self) -> None:
        self._http.close()

    def invalidate(self) -> None:
        """Forget the cached token (SP-API said 401/403: it may have been revoked early)."""
        with self._lock:
            self._token = None

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at - self._margin:
                self._token, lifetime = self._exchange()
                self._expires_at = now + dt.timedelta(seconds=lifetime)
            return self._token

    def _exchange(self) -> tuple[str, float]:
        try:
            response = self._http.post(TOKEN_PATH, data=self._form)
        except httpx.TimeoutException as exc:
            raise TransportError(f"lwa token: timeout ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TransportError(f"lwa token: {type(exc).__name__}") from None
        self.exchanges += 1
        if response.is_success:  # JSON cut short is an answer lost (TransportError), retried
            response = parsed_json("lwa token", response)
        body = _json(response)
        if not response.is_success:
            code = body.get("error") if isinstance(body.get("error"), str) else None
            log.warning("lwa.token_failed", status=response.status_code, code=code)
            message = f"lwa token: HTTP {response.status_code}" + (f" {code}" if code else "")
            error: IntegrationError
            if code in _AUTH_CODES:
                error = AuthError(message, status=response.status_code, code=code)
            else:
                error = error_for_status(response.status_code, message, code=code)
            raise error
        token = body.get("access_token")
        lifetime = body.get("expires_in", 3600)
        if not isinstance(token, str) or not token:
            raise PayloadError("lwa token: response has no access_token")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            raise PayloadError("lwa token: response has an invalid expires_in")
        return token, float(lifetime)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
