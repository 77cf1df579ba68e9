"""Payments: a client for a Stripe-compatible provider (capture and refund with idempotency keys).

The pipeline calls ``PaymentsClient.capture`` with a key derived from our own ids
(``capture:{order_id}``), ``refund`` for a cancelled order's capture (``refund:{order_id}``) and
``retrieve_by_order`` when reconciling; the sandbox simulator of the same provider lives in
``sandbox/payments.py``.
"""

from integrations.payments.client import (
    DEFAULT_PAYMENT_METHOD,
    IdempotencyMismatch,
    PaymentDeclined,
    PaymentsClient,
)
from integrations.payments.payloads import (
    Capture,
    Refund,
    currency_exponent,
    from_minor,
    refund_from_object,
    to_minor,
)

__all__ = [
    "DEFAULT_PAYMENT_METHOD",
    "Capture",
    "IdempotencyMismatch",
    "PaymentDeclined",
    "PaymentsClient",
    "Refund",
    "currency_exponent",
    "from_minor",
    "refund_from_object",
    "to_minor",
]
