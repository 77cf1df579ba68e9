"""Toy webhook deliveries: hex HMAC-SHA256 of the raw body in ``X-Toy-Signature``, the topic in
``X-Toy-Topic``, one ``X-Toy-Delivery`` id per delivery (the same on a redelivery)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["dedupe_key", "kept_headers", "sign", "topic", "verify_signature"]

SIGNATURE_HEADER = "x-toy-signature"


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    if not header or not secret:
        return False
    return hmac.compare_digest(sign(secret, body), header.strip())


def topic(headers: Mapping[str, str]) -> str | None:
    return headers.get("x-toy-topic") or None


def dedupe_key(headers: Mapping[str, str], body: bytes) -> str:
    delivery = headers.get("x-toy-delivery")
    return f"toy:{delivery}" if delivery else f"toy:body:{hashlib.sha256(body).hexdigest()}"


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in ("x-toy-topic", "x-toy-delivery")}
