"""The payments client against respx mocks shaped like Stripe's documented PaymentIntent object
(https://docs.stripe.com/api/payment_intents/object) and error bodies."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from domain.errors import (
    AuthError,
    Conflict,
    PayloadError,
    PermanentError,
    ServerError,
    TransportError,
    ValidationError,
)
from integrations.base import ConnectorSeams
from integrations.payments import (
    Capture,
    IdempotencyMismatch,
    PaymentDeclined,
    PaymentsClient,
    Refund,
)

BASE = "https://api.payments.example"
API_KEY = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"

# A PaymentIntent as the API reference shows it, after confirm=true succeeded.
INTENT: dict[str, Any] = {
    "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    "object": "payment_intent",
    "amount": 2000,
    "amount_capturable": 0,
    "amount_details": {"tip": {}},
    "amount_received": 2000,
    "application": None,
    "application_fee_amount": None,
    "automatic_payment_methods": None,
    "canceled_at": None,
    "cancellation_reason": None,
    "capture_method": "automatic",
    "client_secret": "pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH",
    "confirmation_method": "automatic",
    "created": 1680800504,
    "currency": "usd",
    "customer": None,
    "description": None,
    "last_payment_error": None,
    "latest_charge": "ch_3MtwBwLkdIwHu7ix28a3tqPb",
    "livemode": False,
    "metadata": {"order_ref": "order:42"},
    "next_action": None,
    "on_behalf_of": None,
    "payment_method": "pm_1MtwBwLkdIwHu7ixavB6Hd7S",
    "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
    "payment_method_types": ["card"],
    "processing": None,
    "receipt_email": None,
    "review": None,
    "setup_future_usage": None,
    "shipping": None,
    "source": None,
    "statement_descriptor": None,
    "statement_descriptor_suffix": None,
    "status": "succeeded",
    "transfer_data": None,
    "transfer_group": None,
}


def intent(**changes: Any) -> dict[str, Any]:
    return copy.deepcopy(INTENT) | changes


def stripe_error(status: int, **error: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": error})


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
def client(router: respx.MockRouter, sleeps: Sleeps) -> PaymentsClient:
    seams = ConnectorSeams(transport=httpx.MockTransport(router.handler), sleep=sleeps)
    return PaymentsClient(BASE, API_KEY, seams=seams)


def form(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode()))


def capture(client: PaymentsClient, **overrides: Any) -> Capture:
    args: dict[str, Any] = {
        "order_ref": "order:42",
        "amount": Decimal("20.00"),
        "currency": "USD",
        "idempotency_key": "capture:42",
        "payment_method": "pm_card_visa",  # Stripe's test card: a buyer's saved method
    }
    return client.capture(**(args | overrides))


def test_capture_sends_one_form_encoded_confirmed_intent_with_key_and_bearer_auth(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    # given
    route = router.post("/v1/payment_intents").respond(200, json=intent())

    # when
    result = capture(client)

    # then
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Idempotency-Key"] == "capture:42"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form(request) == {
        "amount": "2000",
        "currency": "usd",
        "confirm": "true",
        "capture_method": "automatic",
        "payment_method": "pm_card_visa",
        "payment_method_types[0]": "card",
        "metadata[order_ref]": "order:42",
    }
    assert route.call_count == 1
    assert result.id == "pi_3MtwBwLkdIwHu7ix28a3tqPa"
    assert result.status == "succeeded" and result.succeeded
    assert result.amount == Decimal("20.00") and result.currency == "USD"
    assert result.replayed is False
    assert result.order_ref == "order:42"


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        (Decimal("10.50"), "USD", "1050"),
        (Decimal("500"), "JPY", "500"),
        (Decimal("5.120"), "KWD", "5120"),
        (Decimal("5.12"), "kwd", "5120"),
    ],
)
def test_amounts_go_out_in_the_currencys_minor_unit(
    client: PaymentsClient, router: respx.MockRouter, amount: Decimal, currency: str, minor: str
) -> None:
    # given
    route = router.post("/v1/payment_intents").respond(
        200, json=intent(amount=int(minor), currency=currency.lower())
    )

    # when
    result = capture(client, amount=amount, currency=currency)

    # then
    assert form(route.calls.last.request)["amount"] == minor
    assert form(route.calls.last.request)["currency"] == currency.lower()
    assert result.amount == amount
    assert result.currency == currency.upper()


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        (Decimal("10.005"), "USD"),  # a tenth of a cent
        (Decimal("500.5"), "JPY"),  # yen have no minor unit
        (Decimal("5.125"), "KWD"),  # Stripe wants the last fils digit to be 0
        (Decimal("0"), "USD"),
        (Decimal("-1.00"), "USD"),
    ],
)
def test_amounts_that_would_need_rounding_are_refused_before_any_request(
    client: PaymentsClient, router: respx.MockRouter, amount: Decimal, currency: str
) -> None:
    route = router.post("/v1/payment_intents").respond(200, json=intent())

    with pytest.raises(ValidationError):
        capture(client, amount=amount, currency=currency)

    assert route.call_count == 0


def test_a_replayed_answer_is_reported_as_replayed(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    router.post("/v1/payment_intents").respond(
        200, json=intent(), headers={"Idempotent-Replayed": "true", "Original-Request": "req_1"}
    )

    result = capture(client)

    assert result.replayed is True
    assert result.id == INTENT["id"]


def test_same_key_with_other_parameters_is_an_idempotency_mismatch_and_not_retried(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    # given: Stripe's answer when a key is reused with different parameters
    route = router.post("/v1/payment_intents").mock(
        return_value=stripe_error(
            400,
            type="idempotency_error",
            message="Keys for idempotent requests can only be used with the same parameters "
            "they were first used with. Try using a key other than 'capture:42' if you meant "
            "to execute a different request.",
        )
    )

    # when / then
    with pytest.raises(IdempotencyMismatch) as raised:
        capture(client)
    assert raised.value.status == 400
    assert raised.value.code == "idempotency_error"
    assert not raised.value.retryable
    assert route.call_count == 1


def test_a_declined_card_is_a_permanent_payment_declined_without_the_banks_message(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    declined = intent(status="requires_payment_method", amount_received=0)
    route = router.post("/v1/payment_intents").mock(
        return_value=stripe_error(
            402,
            type="card_error",
            code="card_declined",
            decline_code="insufficient_funds",
            message="Your card has insufficient funds.",
            charge="ch_3MtwBwLkdIwHu7ix28a3tqPb",
            payment_intent=declined,
        )
    )

    with pytest.raises(PaymentDeclined) as raised:
        capture(client)

    assert raised.value.code == "card_declined:insufficient_funds"
    assert "insufficient funds" not in str(raised.value)
    assert not raised.value.retryable
    assert route.call_count == 1


def test_a_key_in_use_is_retried_in_call_with_the_same_key_then_succeeds(
    client: PaymentsClient, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    # given: the first request with this key is still running at the provider
    in_use = stripe_error(
        409,
        type="invalid_request_error",
        code="idempotency_key_in_use",
        message="There is currently another in-progress request using this Idempotent Key.",
    )
    route = router.post("/v1/payment_intents").mock(
        side_effect=[
            in_use,
            httpx.Response(200, json=intent(), headers={"Idempotent-Replayed": "true"}),
        ]
    )

    # when
    result = capture(client)

    # then
    assert result.replayed is True
    assert [c.request.headers["Idempotency-Key"] for c in route.calls] == ["capture:42"] * 2
    assert form(route.calls[0].request) == form(route.calls[1].request)
    assert len(sleeps) == 1


def test_a_key_that_stays_in_use_surfaces_as_a_retryable_conflict(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    route = router.post("/v1/payment_intents").mock(
        return_value=stripe_error(409, type="invalid_request_error", code="idempotency_key_in_use")
    )

    with pytest.raises(Conflict) as raised:
        capture(client)

    assert raised.value.retryable
    assert raised.value.code == "idempotency_key_in_use"
    assert route.call_count == 3  # the base client's in-call attempts


def test_a_dropped_connection_is_retried_with_the_same_key_and_gets_the_replay(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    route = router.post("/v1/payment_intents").mock(
        side_effect=[
            httpx.RemoteProtocolError("peer closed connection"),
            httpx.Response(200, json=intent(), headers={"Idempotent-Replayed": "true"}),
        ]
    )

    result = capture(client)

    assert result.replayed is True
    assert {c.request.headers["Idempotency-Key"] for c in route.calls} == {"capture:42"}


def test_a_5xx_is_retried_then_surfaces_as_server_error(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    route = router.post("/v1/payment_intents").mock(
        return_value=stripe_error(500, type="api_error", message="Something went wrong.")
    )

    with pytest.raises(ServerError):
        capture(client)
    assert route.call_count == 3


def test_a_timeout_on_the_last_attempt_surfaces_as_a_transport_error(
    router: respx.MockRouter, sleeps: Sleeps
) -> None:
    router.post("/v1/payment_intents").mock(side_effect=httpx.ReadTimeout("slow"))
    seams = ConnectorSeams(transport=httpx.MockTransport(router.handler), sleep=sleeps)
    client = PaymentsClient(BASE, API_KEY, seams=seams, max_attempts=1)

    with pytest.raises(TransportError):
        capture(client)


def test_a_bad_key_is_an_auth_error_that_does_not_carry_the_key(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    router.post("/v1/payment_intents").mock(
        return_value=stripe_error(
            401,
            type="invalid_request_error",
            message=f"Invalid API Key provided: sk_test_****{API_KEY[-4:]}",
        )
    )

    with pytest.raises(AuthError) as raised:
        capture(client)

    assert API_KEY[-4:] not in str(raised.value)
    assert API_KEY not in repr(client)


def test_retrieve_by_order_searches_metadata_and_prefers_the_succeeded_intent(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    # given: a declined first attempt, then a successful one, on two pages
    failed = intent(id="pi_failed", status="requires_payment_method", created=1680800400)
    paid = intent(id="pi_paid", created=1680800300)
    route = router.get("/v1/payment_intents/search").mock(
        side_effect=[
            httpx.Response(
                200,
                json={
                    "object": "search_result",
                    "url": "/v1/payment_intents/search",
                    "has_more": True,
                    "data": [failed],
                    "next_page": "page_2",
                },
            ),
            httpx.Response(
                200,
                json={
                    "object": "search_result",
                    "url": "/v1/payment_intents/search",
                    "has_more": False,
                    "data": [paid],
                    "next_page": None,
                },
            ),
        ]
    )

    # when
    found = client.retrieve_by_order("order:42")

    # then
    assert found is not None and found.id == "pi_paid" and found.succeeded
    first, second = (c.request.url.params for c in route.calls)
    assert first["query"] == "metadata['order_ref']:'order:42'"
    assert "page" not in first and second["page"] == "page_2"


def test_retrieve_by_order_returns_the_newest_attempt_when_none_succeeded(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    older = intent(id="pi_old", status="requires_payment_method", created=100)
    newer = intent(id="pi_new", status="processing", created=200)
    router.get("/v1/payment_intents/search").respond(
        200,
        json={"object": "search_result", "has_more": False, "data": [older, newer]},
    )

    found = client.retrieve_by_order("order:42")

    assert found is not None and found.id == "pi_new" and found.status == "processing"


def test_retrieve_by_order_returns_none_when_nothing_matches(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    other = intent(id="pi_other", metadata={"order_ref": "order:420"})
    router.get("/v1/payment_intents/search").respond(
        200, json={"object": "search_result", "has_more": False, "data": [other]}
    )

    assert client.retrieve_by_order("order:42") is None


def test_an_order_ref_that_would_break_the_search_query_is_refused(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    route = router.get("/v1/payment_intents/search").respond(200, json={})

    with pytest.raises(ValueError):
        client.retrieve_by_order("x' OR status:'succeeded")
    assert route.call_count == 0


def test_retrieve_reads_one_intent_by_id(client: PaymentsClient, router: respx.MockRouter) -> None:
    router.get("/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa").respond(200, json=intent())

    assert client.retrieve("pi_3MtwBwLkdIwHu7ix28a3tqPa").amount == Decimal("20.00")


# -- refunds ----------------------------------------------------------------------------------

# A Refund as the API reference shows it (https://docs.stripe.com/api/refunds/object).
REFUND: dict[str, Any] = {
    "id": "re_1Nispe2eZvKYlo2Cd31jOCgZ",
    "object": "refund",
    "amount": 2000,
    "balance_transaction": "txn_1Nispe2eZvKYlo2CYezqFhEx",
    "charge": "ch_3MtwBwLkdIwHu7ix28a3tqPb",
    "created": 1692942318,
    "currency": "usd",
    "destination_details": {"card": {"reference_status": "pending", "type": "refund"}},
    "metadata": {"order_ref": "order:42"},
    "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    "reason": "requested_by_customer",
    "receipt_number": None,
    "source_transfer_reversal": None,
    "status": "succeeded",
    "transfer_reversal": None,
}


def refund_object(**changes: Any) -> dict[str, Any]:
    return copy.deepcopy(REFUND) | changes


def refund(client: PaymentsClient, **overrides: Any) -> Refund:
    args: dict[str, Any] = {
        "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "amount": Decimal("20.00"),
        "currency": "USD",
        "idempotency_key": "refund:42",
        "order_ref": "order:42",
        "reason": "requested_by_customer",
    }
    return client.refund(**(args | overrides))


def test_refund_sends_one_form_encoded_refund_with_key_and_bearer_auth(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    # given
    route = router.post("/v1/refunds").respond(200, json=refund_object())

    # when
    result = refund(client)

    # then
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Idempotency-Key"] == "refund:42"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form(request) == {
        "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "amount": "2000",
        "reason": "requested_by_customer",
        "metadata[order_ref]": "order:42",
    }
    assert route.call_count == 1
    assert result.id == "re_1Nispe2eZvKYlo2Cd31jOCgZ"
    assert result.payment_intent == "pi_3MtwBwLkdIwHu7ix28a3tqPa"
    assert result.amount == Decimal("20.00") and result.currency == "USD"
    assert result.status == "succeeded" and result.succeeded
    assert result.replayed is False


def test_refund_leaves_out_what_is_not_given_and_converts_to_minor_units(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    route = router.post("/v1/refunds").respond(
        200, json=refund_object(amount=5120, currency="kwd", reason=None, metadata={})
    )

    result = refund(client, amount=Decimal("5.12"), currency="kwd", order_ref=None, reason=None)

    assert form(route.calls.last.request) == {
        "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "amount": "5120",
    }
    assert result.amount == Decimal("5.120") and result.currency == "KWD"


def test_a_replayed_refund_is_reported_as_replayed(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    router.post("/v1/refunds").respond(
        200, json=refund_object(), headers={"Idempotent-Replayed": "true"}
    )

    assert refund(client).replayed is True


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        (Decimal("10.005"), "USD"),
        (Decimal("500.5"), "JPY"),
        (Decimal("5.125"), "KWD"),
        (Decimal("0"), "USD"),
        (Decimal("-1.00"), "USD"),
    ],
)
def test_refund_amounts_that_would_need_rounding_are_refused_before_any_request(
    client: PaymentsClient, router: respx.MockRouter, amount: Decimal, currency: str
) -> None:
    route = router.post("/v1/refunds").respond(200, json=refund_object())

    with pytest.raises(ValidationError):
        refund(client, amount=amount, currency=currency)

    assert route.call_count == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"idempotency_key": ""},
        {"idempotency_key": "k" * 256},
        {"payment_intent": "ch_3MtwBwLkdIwHu7ix28a3tqPb"},
        {"reason": "changed_my_mind"},
    ],
)
def test_bad_refund_arguments_are_value_errors_before_any_request(
    client: PaymentsClient, router: respx.MockRouter, overrides: dict[str, str]
) -> None:
    route = router.post("/v1/refunds").respond(200, json=refund_object())

    with pytest.raises(ValueError):
        refund(client, **overrides)

    assert route.call_count == 0


def test_a_refund_key_reused_with_other_parameters_is_an_idempotency_mismatch(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    route = router.post("/v1/refunds").mock(
        return_value=stripe_error(
            400,
            type="idempotency_error",
            message="Keys for idempotent requests can only be used with the same parameters "
            "they were first used with.",
        )
    )

    with pytest.raises(IdempotencyMismatch) as raised:
        refund(client)

    assert raised.value.status == 400 and raised.value.code == "idempotency_error"
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("code", "param"),
    [
        ("amount_too_large", "amount"),
        ("charge_already_refunded", None),
        ("charge_not_refundable", "payment_intent"),
        ("resource_missing", "payment_intent"),
        ("parameter_invalid_integer", "amount"),
    ],
)
def test_a_refused_refund_is_a_permanent_400_and_not_retried(
    client: PaymentsClient, router: respx.MockRouter, code: str, param: str | None
) -> None:
    # given: a refusal: nothing was refunded, the key is still free
    route = router.post("/v1/refunds").mock(
        return_value=stripe_error(
            400, type="invalid_request_error", code=code, param=param, message="Refused."
        )
    )

    # when
    with pytest.raises(PermanentError) as raised:
        refund(client)

    # then
    assert isinstance(raised.value, ValidationError)
    assert not isinstance(raised.value, IdempotencyMismatch)
    assert raised.value.status == 400 and raised.value.code == code
    assert not raised.value.retryable
    assert route.call_count == 1


def test_a_refund_key_in_use_is_retried_with_the_same_key_and_body(
    client: PaymentsClient, router: respx.MockRouter, sleeps: Sleeps
) -> None:
    route = router.post("/v1/refunds").mock(
        side_effect=[
            stripe_error(409, type="invalid_request_error", code="idempotency_key_in_use"),
            httpx.RemoteProtocolError("peer closed connection"),
            httpx.Response(200, json=refund_object(), headers={"Idempotent-Replayed": "true"}),
        ]
    )

    result = refund(client)

    assert result.replayed is True
    assert [c.request.headers["Idempotency-Key"] for c in route.calls] == ["refund:42"] * 3
    assert len({c.request.content for c in route.calls}) == 1
    assert len(sleeps) == 2


def test_a_refund_answer_that_is_not_a_refund_is_a_payload_error(
    client: PaymentsClient, router: respx.MockRouter
) -> None:
    router.post("/v1/refunds").respond(200, json=intent())

    with pytest.raises(PayloadError):
        refund(client)
