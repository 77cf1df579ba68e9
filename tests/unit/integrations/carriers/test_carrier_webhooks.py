"""ShipEngine-style webhook signatures (``integrations.carriers.webhooks.verify``) against the
sandbox carrier's own key pair: a delivery it signed passes; anything else is refused with the
reason, and a forged signature block never passes."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from domain.errors import PayloadError
from integrations.carriers.webhooks import parse_jwks, parse_track_event, verify
from sandbox.carrier import CarrierSimulator
from sandbox.rsa_keys import new_key_pair

NOW = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)
BODY = json.dumps({"resource_type": "API_TRACK", "resource_url": "https://x/v1/tracking",
                   "data": {"tracking_number": "1Z999", "status_code": "DE",
                            "status_description": "Delivered", "events": []}}).encode()  # fmt: skip


@pytest.fixture(scope="module")
def carrier() -> CarrierSimulator:
    sim = CarrierSimulator(seed=3, clock=lambda: NOW)
    sim.key_pair  # noqa: B018  (made once for the module: ~1 s)
    return sim


def _keys(carrier: CarrierSimulator) -> dict:  # type: ignore[type-arg]
    return parse_jwks(json.dumps(carrier.jwks()))


def test_a_delivery_the_carrier_signed_just_now_passes(carrier: CarrierSimulator) -> None:
    headers = carrier.sign(BODY)
    assert verify(_keys(carrier), headers, BODY, NOW) is None
    # a clock a little ahead or behind ours is fine (ShipEngine: allow for skew)
    assert verify(_keys(carrier), headers, BODY, NOW + dt.timedelta(seconds=290)) is None
    assert verify(_keys(carrier), headers, BODY, NOW - dt.timedelta(seconds=290)) is None


def test_a_changed_body_a_stale_or_missing_timestamp_or_another_key_is_refused(
    carrier: CarrierSimulator,
) -> None:
    keys, headers = _keys(carrier), carrier.sign(BODY)
    assert verify(keys, headers, BODY.replace(b"DE", b"EX"), NOW) == "bad signature"
    assert verify(keys, headers, BODY, NOW + dt.timedelta(minutes=6)) == (
        "timestamp missing or not recent")  # fmt: skip
    moved = {**headers, "x-shipengine-timestamp": "2026-12-03T09:00:01.000Z"}
    assert verify(keys, moved, BODY, NOW) == "bad signature"  # the time is signed too
    assert verify(keys, {**headers, "x-shipengine-rsa-sha256-key-id": "other"}, BODY, NOW) == (
        "unknown key id")  # fmt: skip
    no_sig = {k: v for k, v in headers.items() if k != "x-shipengine-rsa-sha256-signature"}
    assert verify(keys, no_sig, BODY, NOW) == "signature headers missing"
    assert verify(keys, {**headers, "x-shipengine-rsa-sha256-signature": "%%%"}, BODY, NOW) == (
        "signature is not base64")  # fmt: skip
    # a stranger's key pair, presenting the carrier's key id
    stranger = new_key_pair(carrier.key_pair.kid)
    stamp = headers["x-shipengine-timestamp"]
    forged = base64.b64encode(stranger.sign(stamp.encode() + b"." + BODY)).decode()
    signed = {**headers, "x-shipengine-rsa-sha256-signature": forged}
    assert verify(keys, signed, BODY, NOW) == "bad signature"


@pytest.mark.parametrize("signature", [b"", b"\x00" * 255, b"\x01" * 256, b"\xff" * 256])
def test_signature_blocks_of_the_wrong_size_or_value_are_refused(
    carrier: CarrierSimulator, signature: bytes
) -> None:
    headers = {**carrier.sign(BODY),
               "x-shipengine-rsa-sha256-signature": base64.b64encode(signature).decode()}
    assert verify(_keys(carrier), headers, BODY, NOW) in ("bad signature",
                                                          "signature headers missing")


def test_the_keys_setting_must_hold_a_strong_rsa_key() -> None:
    with pytest.raises(ValueError, match="JWKS"):
        parse_jwks("not json")
    with pytest.raises(ValueError, match="no RSA key"):
        parse_jwks('{"keys": []}')
    weak = new_key_pair("weak", bits=1024).jwk()
    with pytest.raises(ValueError, match="at least 2048 bits"):
        parse_jwks(json.dumps({"keys": [weak]}))


def test_a_track_event_is_read_and_anything_else_is_a_payload_error() -> None:
    event = parse_track_event(BODY)
    assert (event.tracking_number, event.tracking.status_code) == ("1Z999", "DE")
    for body in (b"{", b"[]", json.dumps({"resource_type": "API_LABEL"}).encode(),
                 json.dumps({"resource_type": "API_TRACK", "data": {}}).encode()):
        with pytest.raises(PayloadError):
            parse_track_event(body)
