"""The sandbox carrier's own RSA key pair, to sign its webhooks as ShipEngine signs them
(RSASSA-PKCS1-v1_5 with SHA-256, RFC 8017) and to publish the public half as a JWKS document.

Made fresh for each simulator (2048 bits, e = 65537, Miller-Rabin primes from ``secrets``), so
no private key lives in the repository. Standard library only: the sandbox plays the outside
world and imports nothing of ours.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field

__all__ = ["KeyPair", "new_key_pair"]

_E = 65537
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % q for q in range(2, int(p**0.5) + 1))]


def _probably_prime(n: int, rounds: int = 40) -> bool:
    if any(n % p == 0 for p in _SMALL_PRIMES):
        return n in _SMALL_PRIMES
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if (candidate - 1) % _E and _probably_prime(candidate):
            return candidate


def _b64url(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class KeyPair:
    kid: str
    n: int
    d: int = field(repr=False)

    @property
    def size(self) -> int:
        return (self.n.bit_length() + 7) // 8

    def sign(self, message: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 signature of SHA-256(message)."""
        info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        encoded = b"\x00\x01" + b"\xff" * (self.size - len(info) - 3) + b"\x00" + info
        return pow(int.from_bytes(encoded, "big"), self.d, self.n).to_bytes(self.size, "big")

    def jwk(self) -> dict[str, str]:
        return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                "n": _b64url(self.n), "e": _b64url(_E)}  # fmt: skip


def new_key_pair(kid: str, bits: int = 2048) -> KeyPair:
    while True:
        p, q = _prime(bits // 2), _prime(bits // 2)
        n = p * q
        if p != q and n.bit_length() == bits:
            return KeyPair(kid, n, pow(_E, -1, (p - 1) * (q - 1)))
