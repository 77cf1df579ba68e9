"""One small error hierarchy for every outside system (marketplaces, payments, carriers).

The queue decides what to do from the class alone::

    IntegrationError                      anything that went wrong talking to the outside world
    ├── RetryableError                    try again later, with backoff and jitter
    │   ├── TransportError                timeout, connection refused/reset, TLS, DNS
    │   ├── RateLimited                   429 / throttled; ``retry_after`` seconds when known
    │   ├── ServerError                   5xx
    │   └── Conflict                      409 "request in progress" (idempotent retry later)
    └── PermanentError                    retrying cannot help; a human must look
        ├── AuthError                     401 / 403: credentials wrong, expired or revoked
        ├── NotFound                      404
        ├── ValidationError               4xx that says our request is wrong (400, 422)
        ├── AuthorizationUnusable         the payment authorization cannot be captured (expired,
        │                                 voided, smaller than the order): the reason in words
        └── PayloadError                  the response or webhook body does not parse / map

``error_for_status`` turns an HTTP status into the right class. Messages never carry
credentials or customer personal data: only status, operation and the remote error code.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "AuthorizationUnusable",
    "Conflict",
    "IntegrationError",
    "NotFound",
    "OrderNotKnown",
    "PayloadError",
    "PermanentError",
    "RateLimited",
    "RetryableError",
    "ServerError",
    "TransportError",
    "ValidationError",
    "error_for_status",
]


class IntegrationError(Exception):
    """Base class. ``status`` is the HTTP status when there was one."""

    retryable: bool = False
    #: the message may be logged (``core.logging.redacted_message``): the tree's messages name
    #: the operation, status and remote code, never what a customer typed
    log_safe_message: bool = True

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class RetryableError(IntegrationError):
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class TransportError(RetryableError):
    pass


class RateLimited(RetryableError):
    pass


class ServerError(RetryableError):
    pass


class OrderNotKnown(RetryableError):
    """A delivery about an order we do not have yet (a Shopify ``orders/edited`` or
    ``refunds/create`` that overtook the order's own ``orders/create``): the order is fetched
    from the marketplace where we can ask it, else the delivery is tried again later."""

    def __init__(self, message: str, *, external_id: str) -> None:
        super().__init__(message)
        self.external_id = external_id


class Conflict(RetryableError):
    pass


class PermanentError(IntegrationError):
    pass


class AuthError(PermanentError):
    pass


class NotFound(PermanentError):
    pass


class ValidationError(PermanentError):
    pass


class PayloadError(PermanentError):
    pass


class AuthorizationUnusable(PermanentError):
    """The order's payment authorization cannot be captured: it expired, was voided, or covers
    less than the order. The message says which, in words staff act on (amounts and dates, no
    buyer data); the order goes to ``needs_attention``."""


def error_for_status(
    status: int,
    message: str,
    *,
    code: str | None = None,
    retry_after: float | None = None,
) -> IntegrationError:
    """The error class for a non-2xx HTTP status."""
    if status == 429:
        return RateLimited(message, status=status, code=code, retry_after=retry_after)
    if status in (401, 403):
        return AuthError(message, status=status, code=code)
    if status == 404:
        return NotFound(message, status=status, code=code)
    if status == 409:
        return Conflict(message, status=status, code=code, retry_after=retry_after)
    if status == 408 or status >= 500:
        return ServerError(message, status=status, code=code, retry_after=retry_after)
    return ValidationError(message, status=status, code=code)
