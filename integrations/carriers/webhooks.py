"""The carrier's tracking webhooks, as ShipEngine sends them.

ShipEngine (ShipStation API) signs every webhook with RSA-SHA256 (RSASSA-PKCS1-v1_5): three
headers, ``x-shipengine-rsa-sha256-key-id`` (which of its keys), ``x-shipengine-rsa-sha256-
signature`` (base64) and ``x-shipengine-timestamp`` (ISO 8601), over ``{timestamp}.{raw body}``;
its public keys are a JWKS document (``https://api.shipengine.com/jwks``). We hold that document
in a setting (``CARRIER_WEBHOOK_KEYS``: no request of a stranger makes us fetch anything), accept
a timestamp within ``TOLERANCE_S`` of our clock either way (a replay of an old delivery fails),
and compare in constant time.

The verification is the PKCS #1 v1.5 one of RFC 8017 (section 8.2.2): ``s^e mod n`` must equal,
byte for byte, the encoding we build ourselves from the SHA-256 of the signed payload (never a
parse of the decrypted block, so a forged block with trailing garbage cannot pass); keys below
2048 bits or with an exponent other than 65537 are not accepted. Python's integers do the
arithmetic: no new dependency for one exponentiation.

The ``track`` event's body: ``{"resource_url": …, "resource_type": "API_TRACK", "data": {…}}``,
``data`` being the tracking information of ``GET /v1/labels/{id}/track`` plus its
``tracking_number`` (``parse_track_event``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from domain.errors import PayloadError
from integrations.carriers.payloads import Tracking, parse_tracking

__all__ = [
    "KEY_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_S",
    "PublicKey",
    "TrackEvent",
    "parse_jwks",
    "parse_track_event",
    "verify",
]

KEY_ID_HEADER = "x-shipengine-rsa-sha256-key-id"
SIGNATURE_HEADER = "x-shipengine-rsa-sha256-signature"
TIMESTAMP_HEADER = "x-shipengine-timestamp"
#: how far a delivery's timestamp may be from our clock, either way (ShipEngine suggests 5 min)
TOLERANCE_S = 300
#: DER of SHA-256's AlgorithmIdentifier in a DigestInfo (RFC 8017, section 9.2, note 1)
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
_MIN_BITS, _EXPONENT = 2048, 65537


@dataclass(frozen=True)
class PublicKey:
    n: int
    e: int

    @property
    def size(self) -> int:
        return (self.n.bit_length() + 7) // 8


def _b64url_int(value: Any) -> int:
    if not isinstance(value, str) or not value:
        raise ValueError("a JWK number is missing")
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    return int.from_bytes(raw, "big")


def parse_jwks(document: str) -> dict[str, PublicKey]:
    """``{"keys": [{"kid", "kty": "RSA", "n", "e"}, …]}`` → key id → public key. Raises
    ``ValueError`` for a document that holds no usable RSA key (a setting that cannot work)."""
    try:
        keys = json.loads(document)["keys"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("the carrier's webhook keys must be a JWKS document") from None
    found: dict[str, PublicKey] = {}
    for jwk in keys if isinstance(keys, list) else []:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or not jwk.get("kid"):
            continue
        key = PublicKey(_b64url_int(jwk.get("n")), _b64url_int(jwk.get("e")))
        if key.n.bit_length() < _MIN_BITS or key.e != _EXPONENT:
            raise ValueError(f"key {jwk['kid']!r}: RSA of at least {_MIN_BITS} bits, e=65537")
        found[str(jwk["kid"])] = key
    if not found:
        raise ValueError("the carrier's webhook keys hold no RSA key with a kid")
    return found


def _pkcs1_sha256(message: bytes, size: int) -> bytes:
    """EMSA-PKCS1-v1_5 encoding of SHA-256(message) for a ``size``-byte modulus."""
    info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (size - len(info) - 3) + b"\x00" + info


def _timestamp(value: str) -> dt.datetime | None:
    try:
        at = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def verify(
    keys: Mapping[str, PublicKey], headers: Mapping[str, str], body: bytes, now: dt.datetime
) -> str | None:
    """Why the delivery is refused (``None``: it is signed by one of ``keys``, recently).
    ``headers`` are lower-cased. The reasons are for our log, never for the sender."""
    key_id = headers.get(KEY_ID_HEADER, "")
    signature = headers.get(SIGNATURE_HEADER, "")
    stamp = headers.get(TIMESTAMP_HEADER, "")
    if not (key_id and signature and stamp):
        return "signature headers missing"
    key = keys.get(key_id)
    if key is None:
        return "unknown key id"
    at = _timestamp(stamp)
    if at is None or abs((now - at).total_seconds()) > TOLERANCE_S:
        return "timestamp missing or not recent"
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return "signature is not base64"
    if len(raw) != key.size:
        return "bad signature"
    s = int.from_bytes(raw, "big")
    if s >= key.n:
        return "bad signature"
    decoded = pow(s, key.e, key.n).to_bytes(key.size, "big")
    expected = _pkcs1_sha256(stamp.encode() + b"." + body, key.size)
    return None if hmac.compare_digest(decoded, expected) else "bad signature"


@dataclass(frozen=True)
class TrackEvent:
    """One tracking webhook: the parcel's tracking number and what the carrier says of it."""

    tracking_number: str
    tracking: Tracking


def parse_track_event(body: bytes) -> TrackEvent:
    """The ``track`` event's tracking number and tracking (``PayloadError`` if it is not one)."""
    try:
        payload = json.loads(body)
    except ValueError:
        raise PayloadError("carrier webhook: body is not JSON") from None
    if not isinstance(payload, dict) or payload.get("resource_type") != "API_TRACK":
        kind = payload.get("resource_type") if isinstance(payload, dict) else None
        raise PayloadError(f"carrier webhook: not a track event ({str(kind)[:40]!r})")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise PayloadError("carrier webhook: data is not an object")
    number = data.get("tracking_number")
    if not isinstance(number, str) or not number.strip():
        raise PayloadError("carrier webhook: data.tracking_number missing")
    return TrackEvent(number.strip()[:100], parse_tracking(data))
