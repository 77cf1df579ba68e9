"""The payments client against the payment provider simulator over real HTTP.

The simulator's ledger is the outside world's count of charges and refunds: every test that
attacks the "at most one capture per order" or "at most one refund per key" invariant reads it,
not the client's answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from domain.errors import (
    AuthError,
    Conflict,
    PermanentError,
    RetryableError,
    TransportError,
)
from integrations.base import ConnectorSeams
from integrations.payments import (
    Capture,
    IdempotencyMismatch,
    PaymentDeclined,
    PaymentsClient,
    Refund,
)
from sandbox.knobs import Knobs
from sandbox.payments import IDEMPOTENCY_TTL_S, SANDBOX_API_KEY, PaymentsSimulator
from tests.support.servers import serve_app

Serve = Callable[[PaymentsSimulator], str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    with ExitStack() as servers:

        def start(sim: PaymentsSimulator) -> str:
            app = FastAPI()
            app.include_router(sim.build_router(), prefix="/payments")
            return servers.enter_context(serve_app(app)) + "/payments"

        yield start


def _capture(client: PaymentsClient, order: int = 1, **overrides: Any) -> Capture:
    args: dict[str, Any] = {
        "order_ref": f"order:{order}",
        "amount": Decimal("19.99"),
        "currency": "USD",
        "idempotency_key": f"capture:{order}",
        "payment_method": "pm_card_visa",  # Stripe's test card: a buyer's saved method
    }
    return client.capture(**(args | overrides))


def test_the_same_key_replays_the_first_capture_and_the_ledger_counts_one(serve: Serve) -> None:
    # given
    sim = PaymentsSimulator(seed=1)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)

    # when
    first = _capture(client)
    second = _capture(client)

    # then
    assert first.replayed is False and second.replayed is True
    assert first.id == second.id and second.succeeded
    assert second.amount == Decimal("19.99") and second.currency == "USD"
    assert sim.capture_count() == 1
    assert sim.captures[0]["amount"] == 1999 and sim.captures[0]["currency"] == "usd"
    assert sim.captures[0]["order_ref"] == "order:1"


def test_the_replay_is_the_stored_response_byte_for_byte(serve: Serve) -> None:
    sim = PaymentsSimulator(seed=1)
    base = serve(sim)
    body = "amount=1000&currency=usd&confirm=true&payment_method=pm_card_visa"
    headers = {
        "Authorization": f"Bearer {SANDBOX_API_KEY}",
        "Idempotency-Key": "raw-1",
        "Content-Type": "application/x-www-form-urlencoded",
    }

    with httpx.Client(base_url=base) as http:
        first = http.post("/v1/payment_intents", content=body, headers=headers)
        # the same parameters in another order are the same request
        reordered = "&".join(reversed(body.split("&")))
        again = http.post("/v1/payment_intents", content=reordered, headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert sim.capture_count() == 1


def test_the_same_key_with_other_parameters_is_refused_and_charges_nothing_more(
    serve: Serve,
) -> None:
    sim = PaymentsSimulator(seed=1)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)
    _capture(client)

    with pytest.raises(IdempotencyMismatch):
        _capture(client, amount=Decimal("20.00"))

    assert sim.capture_count() == 1
    assert sim.stats["mismatches"] == 1


def test_fifty_concurrent_identical_captures_charge_once_and_all_see_the_same_intent(
    serve: Serve,
) -> None:
    # given: the charge takes a while at the "card network", so duplicates arrive while the
    # first request with the key is still in flight and get 409 idempotency_key_in_use
    sim = PaymentsSimulator(seed=7, processing_s=0.3)
    base = serve(sim)
    callers = 50

    # when
    ids, replays = _same_call_at_once(base, callers, lambda client: _capture(client, order=42))

    # then
    assert len(ids) == callers
    assert len(set(ids)) == 1
    assert sim.capture_count() == 1
    assert len(sim.captures_for("order:42")) == 1
    assert sim.stats["executed"] == 1
    assert sim.stats["conflicts"] > 0  # the race really happened
    assert replays.count(False) == 1  # exactly one caller saw the first, executing answer


def test_a_dropped_connection_after_the_capture_is_learnt_from_the_replay(serve: Serve) -> None:
    # given: the provider applies the capture, then the connection breaks mid-response
    sim = PaymentsSimulator(seed=3, drop_after_apply_rate=1.0)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY, max_attempts=1)

    # when: the caller sees a transport error although the money moved
    with pytest.raises(TransportError):
        _capture(client)
    assert sim.capture_count() == 1

    # then: the retry with the same key gets the stored success, and nothing is charged again
    retried = _capture(client)
    assert retried.replayed is True and retried.succeeded
    assert retried.id == sim.captures[0]["id"]
    assert sim.capture_count() == 1
    assert sim.stats["dropped"] == 1


def test_the_client_recovers_from_a_dropped_connection_within_one_call(serve: Serve) -> None:
    sim = PaymentsSimulator(seed=3, drop_after_apply_rate=1.0)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY, seams=ConnectorSeams(sleep=lambda s: None))

    result = _capture(client)

    assert result.replayed is True and result.succeeded
    assert sim.capture_count() == 1


def test_a_crashed_attempt_finds_its_capture_by_order(serve: Serve) -> None:
    sim = PaymentsSimulator(seed=3, drop_after_apply_rate=1.0)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY, max_attempts=1)
    with pytest.raises(TransportError):
        _capture(client, order=9)

    found = client.retrieve_by_order("order:9")

    assert found is not None and found.succeeded
    assert found.id == sim.captures[0]["id"] and found.amount == Decimal("19.99")
    assert client.retrieve_by_order("order:10") is None
    assert client.retrieve(found.id) == found


def test_a_declined_card_is_permanent_and_its_replay_is_the_same_decline(serve: Serve) -> None:
    sim = PaymentsSimulator(seed=5)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)

    for _ in range(2):
        with pytest.raises(PaymentDeclined) as raised:
            _capture(client, payment_method="pm_card_chargeDeclined")
        assert raised.value.code == "card_declined:generic_decline"

    assert sim.capture_count() == 0
    assert sim.stats["executed"] == 1 and sim.stats["replayed"] == 1
    attempt = client.retrieve_by_order("order:1")
    assert attempt is not None and attempt.status == "requires_payment_method"


def test_decline_rate_declines_some_orders_and_captures_the_rest_once_each(serve: Serve) -> None:
    sim = PaymentsSimulator(seed=11, decline_rate=0.3)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)
    paid, declined = 0, 0

    for order in range(40):
        try:
            _capture(client, order=order)
            paid += 1
        except PaymentDeclined:
            declined += 1

    assert paid > 0 and declined > 0
    assert sim.capture_count() == paid
    assert len(sim.declines) == declined


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        (Decimal("1234.56"), "USD", 1234_56),
        (Decimal("1500"), "JPY", 1500),
        (Decimal("7.250"), "KWD", 7250),
    ],
)
def test_minor_units_reach_the_ledger_and_come_back(
    serve: Serve, amount: Decimal, currency: str, minor: int
) -> None:
    sim = PaymentsSimulator(seed=2)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)

    result = _capture(client, amount=amount, currency=currency)

    assert sim.captures[0]["amount"] == minor
    assert sim.captures[0]["currency"] == currency.lower()
    assert result.amount == amount and result.currency == currency


def test_a_bad_api_key_is_refused_with_stripes_error_body(serve: Serve) -> None:
    sim = PaymentsSimulator(seed=1)
    base = serve(sim)

    with pytest.raises(AuthError):
        _capture(PaymentsClient(base, "sk_test_wrong"))
    raw = httpx.get(f"{base}/v1/payment_intents/pi_x", headers={"Authorization": "Bearer nope"})

    assert raw.status_code == 401
    assert raw.json()["error"]["type"] == "invalid_request_error"
    assert sim.capture_count() == 0


def test_keys_are_forgotten_after_24_hours_and_then_execute_anew(serve: Serve) -> None:
    # given: a clock we move; this is why our own key table must outlive the provider's
    now = [1_700_000_000.0]
    sim = PaymentsSimulator(seed=1, clock=lambda: now[0])
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)
    first = _capture(client)

    # when
    now[0] += IDEMPOTENCY_TTL_S - 1
    within = _capture(client)
    now[0] += 2
    after = _capture(client)

    # then
    assert within.replayed and within.id == first.id
    assert not after.replayed and after.id != first.id
    assert sim.capture_count() == 2


def test_injected_faults_store_nothing_so_retries_still_capture_each_order_once(
    serve: Serve,
) -> None:
    # given: half the requests fail before executing (503s and 429s)
    sim = PaymentsSimulator(Knobs(error_rate=0.3, rate_429=0.2, seed=4))
    no_wait = ConnectorSeams(sleep=lambda s: None)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY, seams=no_wait, max_attempts=1)
    faults = 0

    # when: each order is retried by the caller until it goes through
    for order in range(20):
        for _ in range(50):
            try:
                _capture(client, order=order)
                break
            except RetryableError:
                faults += 1

    # then
    assert sim.capture_count() == 20
    assert sorted(c["order_ref"] for c in sim.captures) == sorted(f"order:{n}" for n in range(20))
    assert sim.stats["executed"] == 20
    assert faults > 0


# -- refunds ----------------------------------------------------------------------------------


def _refund(client: PaymentsClient, intent: str, **overrides: Any) -> Refund:
    args: dict[str, Any] = {
        "payment_intent": intent,
        "amount": Decimal("19.99"),
        "currency": "USD",
        "idempotency_key": "refund:1",
        "order_ref": "order:1",
        "reason": "requested_by_customer",
    }
    return client.refund(**(args | overrides))


def test_a_capture_refunded_in_full_is_in_the_refund_ledger_once(serve: Serve) -> None:
    # given
    sim = PaymentsSimulator(seed=1)
    base = serve(sim)
    client = PaymentsClient(base, SANDBOX_API_KEY)
    capture = _capture(client)

    # when
    refund = _refund(client, capture.id)

    # then
    assert refund.id.startswith("re_") and refund.payment_intent == capture.id
    assert refund.amount == Decimal("19.99") and refund.currency == "USD"
    assert refund.succeeded and refund.replayed is False
    assert sim.refund_count() == 1 and sim.refunded_amount(capture.id) == 1999
    [entry] = sim.refunds_for("order:1")
    assert entry["id"] == refund.id and entry["payment_intent"] == capture.id
    assert entry["amount"] == entry["captured_amount"] == 1999 and entry["currency"] == "usd"
    assert entry["idempotency_key"] == "refund:1"
    assert sim.capture_count() == 1
    raw = httpx.get(
        f"{base}/v1/refunds/{refund.id}", headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"}
    )
    assert raw.status_code == 200
    body = raw.json()
    assert body["object"] == "refund" and body["status"] == "succeeded"
    assert body["charge"] == sim.intents[capture.id]["latest_charge"]
    assert body["reason"] == "requested_by_customer"
    assert body["metadata"] == {"order_ref": "order:1"}


def test_the_same_refund_key_replays_the_first_refund(serve: Serve) -> None:
    sim = PaymentsSimulator(seed=1)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)
    capture = _capture(client)

    first = _refund(client, capture.id)
    second = _refund(client, capture.id)

    assert first.replayed is False and second.replayed is True
    assert second.id == first.id and second.amount == first.amount
    assert sim.refund_count() == 1 and sim.refunded_amount(capture.id) == 1999


def test_a_refund_key_reused_with_another_amount_or_on_another_endpoint_is_a_mismatch(
    serve: Serve,
) -> None:
    sim = PaymentsSimulator(seed=1)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)
    capture = _capture(client)
    _refund(client, capture.id, amount=Decimal("5.00"))

    with pytest.raises(IdempotencyMismatch):
        _refund(client, capture.id, amount=Decimal("6.00"))
    with pytest.raises(IdempotencyMismatch):  # the capture's key on the refunds endpoint
        _refund(client, capture.id, idempotency_key="capture:1")
    with pytest.raises(IdempotencyMismatch):  # and the refund's key on the intents endpoint
        _capture(client, order=2, idempotency_key="refund:1")

    assert sim.refund_count() == 1 and sim.refunded_amount(capture.id) == 500
    assert sim.capture_count() == 1
    assert sim.stats["mismatches"] == 3


def test_twenty_concurrent_identical_refunds_refund_once(serve: Serve) -> None:
    # given: the refund takes a while, so duplicates meet the first one in flight (409)
    sim = PaymentsSimulator(seed=7, processing_s=0.3)
    base = serve(sim)
    setup = PaymentsClient(base, SANDBOX_API_KEY)
    intent = _capture(setup, order=42).id
    callers = 20

    # when
    ids, replays = _same_call_at_once(
        base, callers, lambda client: _refund(client, intent, idempotency_key="refund:42")
    )

    # then
    assert len(ids) == callers and len(set(ids)) == 1
    assert sim.refund_count() == 1 and len(sim.refunds) == 1
    assert sim.refunded_amount(intent) == 1999
    assert sim.stats["conflicts"] > 0
    assert replays.count(False) == 1


def test_partial_refunds_add_up_and_an_over_refund_is_refused_with_a_400(serve: Serve) -> None:
    sim = PaymentsSimulator(seed=1)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)
    intent = _capture(client, amount=Decimal("20.00")).id
    _refund(client, intent, amount=Decimal("5.00"), idempotency_key="refund:1:a")
    _refund(client, intent, amount=Decimal("10.00"), idempotency_key="refund:1:b")

    # when: more than the 5.00 left
    with pytest.raises(PermanentError) as raised:
        _refund(client, intent, amount=Decimal("5.01"), idempotency_key="refund:1:c")

    # then: refused, nothing applied, and the key is still free for the right amount
    assert raised.value.status == 400 and raised.value.code == "amount_too_large"
    assert sim.refund_count() == 2 and sim.refunded_amount(intent) == 1500
    rest = _refund(client, intent, amount=Decimal("5.00"), idempotency_key="refund:1:c")
    assert rest.replayed is False and sim.refunded_amount(intent) == 2000
    with pytest.raises(PermanentError) as again:
        _refund(client, intent, amount=Decimal("0.01"), idempotency_key="refund:1:d")
    assert again.value.status == 400 and again.value.code == "charge_already_refunded"
    assert [r["amount"] for r in sim.refunds_for("order:1")] == [500, 1000, 500]


def test_a_refund_of_an_unknown_intent_stores_nothing_so_its_key_can_refund_later(
    serve: Serve,
) -> None:
    sim = PaymentsSimulator(seed=1)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)

    with pytest.raises(PermanentError) as raised:
        _refund(client, "pi_doesnotexist")

    assert raised.value.status == 400 and raised.value.code == "resource_missing"
    assert not isinstance(raised.value, IdempotencyMismatch)
    assert sim.refund_count() == 0
    capture = _capture(client)
    refund = _refund(client, capture.id)  # same key "refund:1", other parameters: executes
    assert refund.replayed is False and refund.payment_intent == capture.id
    assert sim.refund_count() == 1


def test_an_intent_that_did_not_succeed_is_not_refundable(serve: Serve) -> None:
    sim = PaymentsSimulator(seed=1)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY)
    with pytest.raises(PaymentDeclined):
        _capture(client, payment_method="pm_card_chargeDeclined")
    [declined] = sim.intents

    with pytest.raises(PermanentError) as raised:
        _refund(client, declined)

    assert raised.value.status == 400 and raised.value.code == "charge_not_refundable"
    assert sim.refund_count() == 0


def test_a_dropped_connection_after_the_refund_is_learnt_from_the_replay(serve: Serve) -> None:
    # given: the capture goes through; then the provider refunds and breaks the connection
    sim = PaymentsSimulator(seed=3)
    client = PaymentsClient(serve(sim), SANDBOX_API_KEY, max_attempts=1)
    intent = _capture(client).id
    sim.drop_after_apply_rate = 1.0

    # when: the caller sees a transport error although the money went back
    with pytest.raises(TransportError):
        _refund(client, intent)
    assert sim.refund_count() == 1

    # then: the retry with the same key gets the stored refund, and nothing is refunded again
    retried = _refund(client, intent)
    assert retried.replayed is True and retried.succeeded
    assert retried.id == sim.refunds[0]["id"]
    assert sim.refund_count() == 1 and sim.refunded_amount(intent) == 1999
    assert sim.stats["dropped"] == 1


def test_raw_refund_requests_default_to_the_rest_and_check_their_parameters(serve: Serve) -> None:
    sim = PaymentsSimulator(seed=1)
    base = serve(sim)
    intent = _capture(PaymentsClient(base, SANDBOX_API_KEY), amount=Decimal("10.00")).id
    sim.refund_outside(intent, 300)  # 3.00 refunded in the provider's dashboard
    auth = {"Authorization": f"Bearer {SANDBOX_API_KEY}"}

    with httpx.Client(base_url=base, headers=auth) as http:
        bad = [
            http.post("/v1/refunds", data={"payment_intent": intent, "amount": amount})
            for amount in ("abc", "0", "-5", "1.5")
        ]
        bad_reason = http.post("/v1/refunds", data={"payment_intent": intent, "reason": "meh"})
        missing = http.post("/v1/refunds", data={}, headers={"Idempotency-Key": "k"})
        rest = http.post(
            "/v1/refunds", data={"payment_intent": intent}, headers={"Idempotency-Key": "k"}
        )
        unknown = http.get("/v1/refunds/re_nope")

    for response in bad:
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "parameter_invalid_integer"
    assert bad_reason.status_code == 400 and bad_reason.json()["error"]["param"] == "reason"
    assert missing.status_code == 400
    assert missing.json()["error"] | {"message": ""} == {
        "type": "invalid_request_error",
        "code": "resource_missing",
        "param": "payment_intent",
        "message": "",
        "doc_url": "https://docs.stripe.com/error-codes/resource-missing",
    }
    assert rest.status_code == 200 and rest.json()["amount"] == 700  # the key was still free
    assert rest.json()["reason"] is None and "Idempotent-Replayed" not in rest.headers
    assert unknown.status_code == 404
    assert sim.refund_count() == 1 and sim.refunded_amount(intent) == 1000


def _same_call_at_once(
    base: str, callers: int, call: Callable[[PaymentsClient], Any]
) -> tuple[list[str], list[bool]]:
    """``callers`` threads, each with its own client, make the same keyed call at one moment
    and retry it on 409 (as a task would); the ids and replay flags they all got back."""
    barrier = threading.Barrier(callers)
    ids: list[str] = []
    replays: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        client = PaymentsClient(base, SANDBOX_API_KEY)
        try:
            barrier.wait()
            for _ in range(20):  # the task's own retry loop around the client's in-call retries
                try:
                    result = call(client)
                except Conflict:
                    continue
                with lock:
                    ids.append(result.id)
                    replays.append(result.replayed)
                return
            raise AssertionError("still in conflict after 20 tries")
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    return ids, replays
