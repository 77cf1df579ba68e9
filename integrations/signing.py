"""Webhook signatures checked as the body streams in, so that a body with a bad signature is
never held whole by the web process (issue 9, finding 5).

Shopify and WooCommerce both sign the raw body with a base64 HMAC-SHA256 of a shared secret;
``HmacCheck`` is fed the body chunk by chunk and compares the digest in constant time at the end.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable

__all__ = ["HmacCheck", "b64_digest", "hex_digest"]


def b64_digest(digest: bytes) -> bytes:
    return base64.b64encode(digest)


def hex_digest(digest: bytes) -> bytes:
    return digest.hex().encode()


class HmacCheck:
    """HMAC-SHA256 of the body under each candidate secret (WooCommerce may have stored the
    secret HTML-escaped), compared with the signature header once the body has been read."""

    def __init__(
        self,
        secrets: Iterable[str],
        header: str | None,
        encode: Callable[[bytes], bytes] = b64_digest,
    ) -> None:
        self._macs = [hmac.new(s.encode(), digestmod=hashlib.sha256) for s in set(secrets) if s]
        self._received = (header or "").strip().encode()
        self._encode = encode

    def update(self, chunk: bytes) -> None:
        for mac in self._macs:
            mac.update(chunk)

    def valid(self) -> bool:
        if not self._received or not self._macs:
            return False
        # every candidate is compared, so the time does not depend on which one matched
        results = [
            hmac.compare_digest(self._encode(mac.digest()), self._received) for mac in self._macs
        ]
        return any(results)
