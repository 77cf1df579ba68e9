"""Payments: a client for a Stripe-compatible provider (capture and refund with idempotency keys).

The pipeline captures a PaymentIntent the shop's checkout authorised
(``PaymentsClient.capture_authorization``, key ``capture:{order_id}``) and refunds what we
captured (``refund``: ``refund:{order_id}`` for a cancellation, one key per staff refund).
``capture`` (create and confirm an intent with a PaymentMethod the caller names) and
``retrieve_by_order`` are the provider's API as the sandbox tests exercise it; the pipeline never
creates a payment of its own. The sandbox simulator of the same provider lives in
``sandbox/payments.py``.
"""

from integrations.payments.client import (
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
