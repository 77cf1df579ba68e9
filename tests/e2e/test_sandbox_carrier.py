"""The carrier client against the sandbox carrier over real HTTP: labels, idempotency, faults.

The PDF checks read the file itself (no reportlab, no PDF library): the label is rendered
uncompressed, so its text operators are plain, and the Code 128 barcode is decoded back from
the widths of its bars with the standard symbol table below.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI

from domain.canonical import Address
from domain.errors import AuthError, Conflict, TransportError
from integrations.base import ConnectorSeams
from integrations.carriers import (
    AddressRejected,
    CarrierClient,
    IdempotencyKeyReused,
    Parcel,
    PurchasedLabel,
)
from sandbox.carrier import SANDBOX_API_KEY, CarrierSimulator, ups_check_digit
from tests.support.servers import serve_app

SHIP_TO = Address(
    name="Zoë Müller",
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
PARCEL = Parcel(weight_grams=1200, length_cm=30, width_cm=20, height_cm=10)

# Code 128 symbol widths (bar, space, bar, ...) for values 0-106, as in ISO/IEC 15417
CODE128 = (
    "212222 222122 222221 121223 121322 131222 122213 122312 132212 221213 221312 231212 "
    "112232 122132 122231 113222 123122 123221 223211 221132 221231 213212 223112 312131 "
    "311222 321122 321221 312212 322112 322211 212123 212321 232121 111323 131123 131321 "
    "112313 132113 132311 211313 231113 231311 112133 112331 132131 113123 113321 133121 "
    "313121 211331 231131 213113 213311 213131 311123 311321 331121 312113 312311 332111 "
    "314111 221411 431111 111224 111422 121124 121421 141122 141221 112214 112412 122114 "
    "122411 142112 142211 241211 221114 413111 241112 134111 111242 121142 121241 114212 "
    "124112 124211 411212 421112 421211 212141 214121 412121 111143 111341 131141 114113 "
    "114311 411113 411311 113141 114131 311141 411131 211412 211214 211232 2331112"
).split()
SYMBOLS = {widths: value for value, widths in enumerate(CODE128)}


def decode_code128(pdf: bytes) -> str:
    """The text of the (single) Code 128 barcode drawn as filled rectangles in ``pdf``."""
    rects = [
        tuple(float(v) for v in m.groups())
        for m in re.finditer(rb"([-\d.]+) ([-\d.]+) ([-\d.]+) ([-\d.]+) re f", pdf)
    ]
    height = Counter(r[3] for r in rects).most_common(1)[0][0]
    bars = sorted((x, w) for x, _, w, h in rects if h == height)
    module = min(w for _, w in bars)
    widths: list[int] = []
    for i, (x, w) in enumerate(bars):
        widths.append(round(w / module))
        if i + 1 < len(bars):
            widths.append(round((bars[i + 1][0] - x - w) / module))
    values = [SYMBOLS["".join(map(str, widths[i : i + 6]))] for i in range(0, len(widths) - 7, 6)]
    assert "".join(map(str, widths[-7:])) == CODE128[106], "no stop pattern"
    start, *data, check = values
    assert start in (103, 104, 105), "no start code"
    assert (start + sum(i * v for i, v in enumerate(data, 1))) % 103 == check, "bad checksum"
    code_set, text = {103: "A", 104: "B", 105: "C"}[start], ""
    switch = {99: "C", 100: "B", 101: "A"}  # (FNC1-4 and SHIFT are not used by labels)
    for v in data:
        if code_set == "C" and v < 100:
            text += f"{v:02d}"
        elif v in switch:
            code_set = switch[v]
        elif code_set == "A":
            text += chr(v + 32) if v < 64 else chr(v - 64)
        else:
            text += chr(v + 32)
    return text


@pytest.fixture
def sim() -> CarrierSimulator:
    return CarrierSimulator(seed=7)


@pytest.fixture
def base_url(sim: CarrierSimulator) -> Iterator[str]:
    app = FastAPI()
    app.include_router(sim.build_router(), prefix="/carrier")
    with serve_app(app) as url:
        yield url + "/carrier"


def _capped_sleep(seconds: float) -> None:
    # keep the real jittered backoff's shape but not its length: tests wait 50 ms at most
    time.sleep(min(seconds, 0.05))


@pytest.fixture
def make_client(base_url: str) -> Iterator[Callable[..., CarrierClient]]:
    clients: list[CarrierClient] = []

    def make(api_key: str = SANDBOX_API_KEY, max_attempts: int = 3) -> CarrierClient:
        seams = ConnectorSeams(sleep=_capped_sleep)
        client = CarrierClient(base_url, api_key, seams=seams, max_attempts=max_attempts)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _buy(
    client: CarrierClient,
    ref: str = "shp_1",
    *,
    key: str | None = None,
    ship_to: Address = SHIP_TO,
    parcel: Parcel = PARCEL,
) -> PurchasedLabel:
    return client.buy_label(
        shipment_ref=ref,
        ship_to=ship_to,
        ship_from=SHIP_FROM,
        parcel=parcel,
        idempotency_key=key or f"label:{ref}",
    )


def test_a_bought_label_is_a_4x6_pdf_with_the_tracking_number_and_its_barcode(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    # when
    label = _buy(make_client())
    # then
    pdf = label.pdf
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert b"/MediaBox [ 0 0 288 432 ]" in pdf  # 4 x 6 inches in points
    tracking = label.tracking_number
    assert re.fullmatch(r"1Z[0-9A-Z]{6}03\d{7}\d", tracking)  # 03 = UPS Ground
    assert tracking[-1] == ups_check_digit(tracking[2:-1])
    assert f"({tracking}) Tj".encode() in pdf  # the barcode's human-readable line
    assert b"(UPS GROUND) Tj" in pdf
    assert b"(Zo\\353 M\\374ller) Tj" in pdf  # ship-to name, WinAnsi-encoded
    assert b"(4009 Marathon Blvd) Tj" in pdf  # ship-from
    assert decode_code128(pdf) == tracking
    assert label.carrier == "ups" and label.service == "ups_ground"
    assert sim.label_count() == 1


def test_the_ups_check_digit_matches_the_published_sample() -> None:
    # UPS's published sample number: 1Z 999 AA1 01 2345 678 4
    assert ups_check_digit("999AA1012345678") == "4"


def test_tracking_numbers_are_unique_and_valid(make_client: Callable[..., CarrierClient]) -> None:
    client = make_client()
    labels = [_buy(client, f"shp_{i}") for i in range(40)]
    numbers = [label.tracking_number for label in labels]
    assert len(set(numbers)) == 40
    assert all(n[-1] == ups_check_digit(n[2:-1]) for n in numbers)
    assert len({label.label_id for label in labels}) == 40


def test_the_same_key_and_request_replays_the_same_label(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    client = make_client()
    first = _buy(client)
    again = _buy(client)
    assert first.replayed is False and again.replayed is True
    assert (again.label_id, again.tracking_number, again.pdf) == (
        first.label_id,
        first.tracking_number,
        first.pdf,
    )
    assert sim.label_count() == 1


def test_the_same_key_with_another_parcel_is_refused(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    client = make_client()
    _buy(client)
    heavier = Parcel(weight_grams=5000, length_cm=30, width_cm=20, height_cm=10)
    with pytest.raises(IdempotencyKeyReused):
        _buy(client, parcel=heavier)
    assert sim.label_count() == 1


def test_an_undeliverable_address_is_rejected_and_the_key_stays_usable(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    # given
    client = make_client()
    bad = SHIP_TO.model_copy(update={"postal_code": "00000", "region": None})
    # when
    with pytest.raises(AddressRejected) as caught:
        _buy(client, ship_to=bad)
    # then
    assert set(caught.value.fields) == {"ship_to.postal_code", "ship_to.state_province"}
    assert "00000" not in str(caught.value) and "Müller" not in str(caught.value)
    assert sim.label_count() == 0
    # and a corrected request may use the same key (a rejected request is not stored)
    assert _buy(client).replayed is False
    assert sim.label_count() == 1


def test_a_wrong_api_key_is_an_auth_error(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    with pytest.raises(AuthError):
        _buy(make_client(api_key="TEST_wrong"))
    assert sim.label_count() == 0


def test_thirty_concurrent_identical_purchases_buy_one_label(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    # given: 30 workers, each with its own client, released at the same instant, and a carrier
    # that takes a moment to buy (so the others really arrive while the first is in flight)
    sim.apply_latency_s = 0.3
    workers = 30
    barrier = threading.Barrier(workers)
    results: list[PurchasedLabel] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    clients = [make_client(max_attempts=20) for _ in range(workers)]

    def worker(client: CarrierClient) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(20):  # a task that meets Conflict retries later, like this
                try:
                    label = _buy(client)
                    break
                except Conflict:
                    continue
            else:
                raise AssertionError("still in conflict after 20 tries")
            with lock:
                results.append(label)
        except BaseException as exc:  # surfaced by the main thread below
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    # when
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # then
    assert not failures, failures
    assert len(results) == workers
    assert sim.label_count() == 1
    assert len({r.tracking_number for r in results}) == 1
    assert len({r.label_id for r in results}) == 1
    assert len({r.pdf for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1  # one caller bought, 29 were answered
    assert sim.conflicts > 0  # the in-flight path (409) was exercised, not only replays


def test_a_dropped_connection_after_purchase_then_a_retry_leaves_one_label(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    # given: the carrier buys the label, then the connection dies before the answer arrives
    sim.drop_after_apply_rate = 1.0
    client = make_client(max_attempts=1)
    with pytest.raises(TransportError):
        _buy(client)
    assert sim.label_count() == 1
    # when: the task retries with the same key
    label = _buy(client)
    # then
    assert label.replayed is True
    assert sim.label_count() == 1
    assert label.tracking_number == next(iter(sim.labels.values())).tracking_number


def test_in_call_retries_absorb_a_dropped_connection(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    sim.drop_after_apply_rate = 1.0
    labels = [_buy(make_client(), f"shp_{i}") for i in range(3)]
    assert all(label.replayed for label in labels)
    assert sim.label_count() == 3


def test_a_crashed_attempt_recovers_the_label_by_shipment_reference(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    # given: bought, answer lost
    sim.drop_after_apply_rate = 1.0
    client = make_client(max_attempts=1)
    with pytest.raises(TransportError):
        _buy(client, "shp_9")
    # when
    found = client.get_label_by_ref("shp_9")
    # then
    assert found is not None
    bought = sim.labels["label:shp_9"]
    assert (found.label_id, found.tracking_number, found.pdf) == (
        bought.label_id,
        bought.tracking_number,
        bought.pdf,
    )
    assert client.get_label_by_ref("shp_unknown") is None


def test_a_voided_label_is_no_longer_found(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    client = make_client()
    label = _buy(client)
    assert client.void_label(label.label_id) is True
    assert client.void_label(label.label_id) is True  # voiding twice is harmless
    assert client.get_label_by_ref("shp_1") is None
    assert sim.label_count() == 1
    assert sim.label_count(include_voided=False) == 0


def test_an_intended_drop_is_not_logged_as_a_server_error(
    make_client: Callable[..., CarrierClient], sim: CarrierSimulator
) -> None:
    import logging

    # given: the carrier drops its answer on purpose; a handler on uvicorn's own error logger
    # (it does not propagate to the root, so caplog would see nothing either way)
    sim.drop_after_apply_rate = 1.0
    client = make_client(max_attempts=1)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = seen.append  # type: ignore[method-assign,assignment]
    server_log = logging.getLogger("uvicorn.error")
    server_log.addHandler(handler)
    try:
        # when
        with pytest.raises(TransportError):
            _buy(client, "shp_quiet")
    finally:
        server_log.removeHandler(handler)
    # then: the drop happened (the label exists), and uvicorn logged no traceback for it
    assert sim.label_count() == 1
    assert not [r for r in seen if r.exc_info]


def test_the_drop_filter_keeps_every_other_exception() -> None:
    import logging

    from sandbox.knobs import IntendedDrop, _not_intended

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application",
            None, (type(exc), exc, None),
        )  # fmt: skip

    assert _not_intended(record(IntendedDrop("on purpose"))) is False
    assert _not_intended(record(ConnectionAbortedError("a real one"))) is True
    assert _not_intended(record(RuntimeError("a bug"))) is True
