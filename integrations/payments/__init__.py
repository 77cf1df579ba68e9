"""Payments: a client for a Stripe-compatible provider (capture with an idempotency key).

The pipeline calls ``PaymentsClient.capture`` with a key derived from our own ids
(``capture:{order_id}``) and ``retrieve_by_order`` when reconciling; the sandbox simulator of
the same provider lives in ``sandbox/payments.py``.
"""

from integrations.payments.client import (
    DEFAULT_PAYMENT_METHOD,
    IdempotencyMismatch,
    PaymentDeclined,
    PaymentsClient,
)
from integrations.payments.payloads import Capture, currency_exponent, from_minor, to_minor

__all__ = [
    "DEFAULT_PAYMENT_METHOD",
    "Capture",
    "IdempotencyMismatch",
    "PaymentDeclined",
    "PaymentsClient",
    "currency_exponent",
    "from_minor",
    "to_minor",
]
