"""The carrier client against respx mocks shaped like ShipEngine's label API."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
import respx

from domain.canonical import Address
from domain.errors import (
    AuthError,
    Conflict,
    PayloadError,
    ServerError,
    ValidationError,
)
from integrations.base import ConnectorSeams
from integrations.carriers import (
    AddressRejected,
    CarrierClient,
    IdempotencyKeyReused,
    Parcel,
)

BASE = "https://api.carrier.test"
API_KEY = "TEST_unit_key_123"
PDF = b"%PDF-1.4\n% a label\n%%EOF\n"
KEY = "label:shp_42"

SHIP_TO = Address(
    name="Amanda Miller",
    line1="525 S Winchester Blvd",
    city="San Jose",
    region="CA",
    postal_code="95128",
    country_code="US",
)
SHIP_FROM = Address(
    name="Warehouse 1",
    company="Example Corp.",
    line1="4009 Marathon Blvd",
    city="Austin",
    region="TX",
    postal_code="78756",
    country_code="US",
    phone="512-555-5555",
)
PARCEL = Parcel(weight_grams=1200, length_cm=30, width_cm=20.5, height_cm=10)


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(base_url=BASE, assert_all_called=False)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(router: respx.MockRouter, sleeps: Sleeps) -> CarrierClient:
    seams = ConnectorSeams(transport=httpx.MockTransport(router.handler), sleep=sleeps)
    return CarrierClient(BASE, API_KEY, seams=seams)


def _label(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "label_id": "se-1001",
        "status": "completed",
        "shipment_id": "se-2001",
        "external_shipment_id": "shp_42",
        "tracking_number": "1Z999AA10123456784",
        "carrier_code": "ups",
        "service_code": "ups_ground",
        "voided": False,
        "label_download": {"href": base64.b64encode(PDF).decode()},
    }
    body.update(overrides)
    return body


def _errors(status: int, code: str, *fields: str) -> httpx.Response:
    errors = [
        {
            "error_source": "carrier",
            "error_type": "validation",
            "error_code": code,
            "message": "nope",
            **({"field_name": f} if f else {}),
        }
        for f in (fields or ("",))
    ]
    return httpx.Response(status, json={"request_id": "r1", "errors": errors})


def _buy(client: CarrierClient, key: str = KEY, ship_to: Address = SHIP_TO) -> Any:
    return client.buy_label(
        shipment_ref="shp_42",
        ship_to=ship_to,
        ship_from=SHIP_FROM,
        parcel=PARCEL,
        idempotency_key=key,
    )


def test_buys_a_label_with_api_key_and_idempotency_key(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    # given
    route = router.post("/v1/labels").respond(200, json=_label())
    # when
    label = _buy(client)
    # then
    request = route.calls.last.request
    assert request.headers["API-Key"] == API_KEY
    assert request.headers["Idempotency-Key"] == KEY
    body = json.loads(request.content)
    assert body["label_format"] == "pdf" and body["label_layout"] == "4x6"
    assert body["label_download_type"] == "inline"
    shipment = body["shipment"]
    assert shipment["external_shipment_id"] == "shp_42"
    assert shipment["service_code"] == "ups_ground"
    assert shipment["ship_to"] == {
        "name": "Amanda Miller",
        "address_line1": "525 S Winchester Blvd",
        "city_locality": "San Jose",
        "state_province": "CA",
        "postal_code": "95128",
        "country_code": "US",
        "address_residential_indicator": "unknown",
    }
    assert shipment["ship_from"]["company_name"] == "Example Corp."
    assert shipment["packages"] == [
        {
            "weight": {"value": 1200, "unit": "gram"},
            "dimensions": {"unit": "centimeter", "length": 30, "width": 20.5, "height": 10},
        }
    ]
    assert label.label_id == "se-1001"
    assert label.carrier == "ups" and label.service == "ups_ground"
    assert label.tracking_number == "1Z999AA10123456784"
    assert label.pdf == PDF
    assert label.replayed is False


def test_a_retry_sends_the_same_bytes(client: CarrierClient, router: respx.MockRouter) -> None:
    route = router.post("/v1/labels").respond(200, json=_label())
    _buy(client)
    _buy(client)
    first, second = (call.request for call in route.calls)
    assert first.content == second.content
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]


def test_a_replayed_answer_is_marked_replayed(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    router.post("/v1/labels").respond(200, json=_label(), headers={"Idempotent-Replayed": "true"})
    label = _buy(client)
    assert label.replayed is True
    assert label.tracking_number == "1Z999AA10123456784"


def test_a_key_reused_with_another_request_is_a_permanent_error(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    route = router.post("/v1/labels").mock(return_value=_errors(400, "idempotency_key_reused"))
    with pytest.raises(IdempotencyKeyReused) as caught:
        _buy(client)
    assert isinstance(caught.value, ValidationError)
    assert caught.value.retryable is False
    assert route.call_count == 1  # never retried


def test_a_key_in_use_is_retried_until_the_first_request_finished(
    client: CarrierClient, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = router.post("/v1/labels").mock(
        side_effect=[
            _errors(409, "idempotency_key_in_use"),
            httpx.Response(200, json=_label(), headers={"Idempotent-Replayed": "true"}),
        ]
    )
    label = _buy(client)
    assert route.call_count == 2
    assert len(sleeps) == 1  # one backoff between the two attempts
    assert label.replayed is True


def test_a_key_still_in_use_after_every_attempt_surfaces_as_conflict(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    router.post("/v1/labels").mock(return_value=_errors(409, "idempotency_key_in_use"))
    with pytest.raises(Conflict) as caught:
        _buy(client)
    assert caught.value.retryable is True


def test_a_rejected_address_names_the_fields_but_not_the_address(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    # given
    router.post("/v1/labels").mock(
        return_value=_errors(422, "invalid_address", "ship_to.postal_code", "ship_to.city_locality")
    )
    bad = SHIP_TO.model_copy(update={"postal_code": "00000", "city": "Nowhere Town"})
    # when
    with pytest.raises(AddressRejected) as caught:
        _buy(client, ship_to=bad)
    # then
    error = caught.value
    assert error.fields == ("ship_to.postal_code", "ship_to.city_locality")
    assert error.status == 422 and error.retryable is False
    assert "ship_to.postal_code" in str(error)
    for secret in ("00000", "Nowhere", "Amanda", "Winchester"):
        assert secret not in str(error)


def test_another_422_is_a_plain_validation_error(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    router.post("/v1/labels").mock(return_value=_errors(422, "invalid_package", "weight"))
    with pytest.raises(ValidationError) as caught:
        _buy(client)
    assert not isinstance(caught.value, AddressRejected)


def test_a_5xx_is_retried_then_raised_as_retryable(
    client: CarrierClient, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = router.post("/v1/labels").respond(503, json={"errors": []})
    with pytest.raises(ServerError) as caught:
        _buy(client)
    assert caught.value.retryable is True
    assert route.call_count == 3  # ApiClient's in-call attempts
    assert len(sleeps) == 2


def test_a_5xx_followed_by_success_buys_the_label(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    router.post("/v1/labels").mock(
        side_effect=[httpx.Response(502), httpx.Response(200, json=_label())]
    )
    assert _buy(client).tracking_number == "1Z999AA10123456784"


def test_a_bad_api_key_is_an_auth_error_and_not_retried(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    route = router.post("/v1/labels").mock(return_value=_errors(401, "unauthorized"))
    with pytest.raises(AuthError) as caught:
        _buy(client)
    assert route.call_count == 1
    assert API_KEY not in str(caught.value)


def test_an_answer_without_a_pdf_is_a_payload_error(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    not_pdf = base64.b64encode(b"<html>oops</html>").decode()
    router.post("/v1/labels").respond(200, json=_label(label_download={"href": not_pdf}))
    with pytest.raises(PayloadError):
        _buy(client)


def test_a_label_for_another_shipment_is_never_returned(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    router.post("/v1/labels").respond(200, json=_label(external_shipment_id="shp_other"))
    with pytest.raises(PayloadError):
        _buy(client)


def test_finds_a_bought_label_by_shipment_reference(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    # given: a voided label and a live one for the same shipment
    url = f"{BASE}/v1/downloads/labels/se-1001.pdf"
    listed = [
        _label(label_id="se-0999", voided=True, label_download={"pdf": url}),
        _label(label_download={"pdf": url, "href": url}),
    ]
    lister = router.get("/v1/labels").respond(200, json={"labels": listed, "total": 2})
    download = router.get("/v1/downloads/labels/se-1001.pdf").respond(200, content=PDF)
    # when
    label = client.get_label_by_ref("shp_42")
    # then
    assert label is not None
    assert label.label_id == "se-1001" and label.pdf == PDF and label.replayed is True
    assert lister.calls.last.request.url.params["external_shipment_id"] == "shp_42"
    assert download.calls.last.request.headers["API-Key"] == API_KEY


def test_no_label_for_a_reference_is_none(client: CarrierClient, router: respx.MockRouter) -> None:
    router.get("/v1/labels").respond(200, json={"labels": [], "total": 0})
    assert client.get_label_by_ref("shp_42") is None


def test_never_sends_the_api_key_to_a_download_url_elsewhere(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    elsewhere = "https://evil.example.com/label.pdf"
    router.get("/v1/labels").respond(
        200, json={"labels": [_label(label_download={"pdf": elsewhere})]}
    )
    with pytest.raises(PayloadError):
        client.get_label_by_ref("shp_42")


def test_voids_a_label(client: CarrierClient, router: respx.MockRouter) -> None:
    route = router.put("/v1/labels/se-1001/void").respond(
        200, json={"approved": True, "message": "Request for refund submitted."}
    )
    assert client.void_label("se-1001") is True
    assert route.call_count == 1


def test_an_unusable_idempotency_key_is_refused_before_any_request(
    client: CarrierClient, router: respx.MockRouter
) -> None:
    route = router.post("/v1/labels").respond(200, json=_label())
    for key in ("", "k" * 256):
        with pytest.raises(ValueError):
            _buy(client, key=key)
    assert route.call_count == 0


def test_a_parcel_must_weigh_something() -> None:
    with pytest.raises(ValueError):
        Parcel(weight_grams=0, length_cm=1, width_cm=1, height_cm=1)
