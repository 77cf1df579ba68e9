"""POST /webhooks/carrier/{name}: signed deliveries are stored once and answered 200; a bad
signature is 401 and nothing is stored; unset keys 404, untrustworthy keys 503 (the real app,
SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from core.settings import get_settings
from db.models import CarrierEvent
from db.session import get_sessionmaker
from sandbox.carrier import CarrierSimulator
from sandbox.rsa_keys import new_key_pair
from web.app import create_app
from web.carrier_webhooks import _keys

URL = "/webhooks/carrier/shipengine"
BODY = json.dumps({"resource_type": "API_TRACK", "data": {"tracking_number": "1ZX",
                                                          "status_code": "IT"}}).encode()


@pytest.fixture(scope="module")
def carrier() -> CarrierSimulator:
    return CarrierSimulator(seed=5)


@pytest.fixture
def env(
    migrated_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("ORDERSYNC_DATABASE_URL", migrated_url)
    monkeypatch.setenv("ORDERSYNC_REDIS_URL", redis_url)
    monkeypatch.setenv("ORDERSYNC_VAR_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()
    _keys.cache_clear()


def _stored(url: str) -> list[CarrierEvent]:
    with get_sessionmaker(url)() as session:
        return list(session.scalars(select(CarrierEvent)))


def test_signed_once_stored_bad_signature_refused_and_unconfigured_not_found(
    env: pytest.MonkeyPatch, carrier: CarrierSimulator, migrated_url: str
) -> None:
    client = TestClient(create_app())
    assert client.post(URL, content=BODY, headers=carrier.sign(BODY)).status_code == 404

    env.setenv("ORDERSYNC_CARRIER_WEBHOOK_KEYS", json.dumps(carrier.jwks()))
    get_settings.cache_clear()
    client = TestClient(create_app())
    forged = client.post(URL, content=BODY + b" ", headers=carrier.sign(BODY))
    unsigned = client.post(URL, content=BODY)
    first = client.post(URL, content=BODY, headers=carrier.sign(BODY))
    again = client.post(URL, content=BODY, headers=carrier.sign(BODY))  # the carrier's retry

    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert (first.status_code, first.json()["status"]) == (200, "accepted")
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    (event,) = _stored(migrated_url)
    assert (event.carrier, event.body) == ("shipengine", BODY)


def test_keys_too_weak_to_trust_answer_503_and_store_nothing(
    env: pytest.MonkeyPatch, migrated_url: str
) -> None:
    weak = new_key_pair("weak", bits=1024)
    env.setenv("ORDERSYNC_CARRIER_WEBHOOK_KEYS", json.dumps({"keys": [weak.jwk()]}))
    get_settings.cache_clear()
    client = TestClient(create_app())
    assert client.post(URL, content=BODY).status_code == 503
    assert _stored(migrated_url) == []
