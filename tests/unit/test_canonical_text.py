"""The canonical order holds only text that UTF-8 can carry: a lone surrogate (half of a UTF-16
pair, as JSON's ``\\ud800`` escape decodes) becomes U+FFFD in every string, ``raw`` included."""

from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st

from domain.canonical import (
    _SURROGATE,
    Address,
    CanonicalLine,
    CanonicalOrder,
    from_checked_text,
    may_hold_surrogates,
)
from integrations.carriers.payloads import Parcel, label_request
from integrations.shopify.mapper import map_order
from tests.unit.integrations.shopify.fixtures import order as shopify_order

HALF = "\ud800"  # a high surrogate with no low one after it
LOW = "\udc00"


def _order(**changes: Any) -> CanonicalOrder:
    fields: dict[str, Any] = {
        "channel": "shopify",
        "account": "shop",
        "external_id": "1",
        "currency": "USD",
        "subtotal": "10",
        "total": "10",
        "updated_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }
    return CanonicalOrder(**(fields | changes))


def test_a_lone_surrogate_in_any_address_field_becomes_the_replacement_character() -> None:
    fields = {name: f"{name} {HALF}end" for name in Address.model_fields}

    address = Address(**fields)

    for name in Address.model_fields:
        assert getattr(address, name) == f"{name} \ufffdend"


def test_order_line_and_raw_strings_are_cleaned_keys_too_and_other_values_kept() -> None:
    order = _order(
        external_number=f"#10{LOW}",
        buyer_name=f"Bob{HALF}",
        buyer_email=f"bob{HALF}@example.com",
        shipping_address={"city": f"Lou{HALF}isville"},
        lines=[
            CanonicalLine(
                external_id="1",
                title=f"Mug {HALF}",
                quantity=1,
                unit_price=Decimal(10),
                total=Decimal(10),
            ),
            {"external_id": "2", "sku": f"S{LOW}", "quantity": 0, "unit_price": "0", "total": "0"},
        ],
        raw={f"k{HALF}": [f"a{LOW}", {"b": HALF}, 3, None, True], "n": 1.5},
    )

    assert order.external_number == "#10\ufffd"
    assert (order.buyer_name, order.buyer_email) == ("Bob\ufffd", "bob\ufffd@example.com")
    assert order.shipping_address is not None
    assert order.shipping_address.city == "Lou\ufffdisville"
    assert [line.title for line in order.lines] == ["Mug \ufffd", ""]
    assert order.lines[1].sku == "S\ufffd"
    assert order.raw == {"k\ufffd": ["a\ufffd", {"b": "\ufffd"}, 3, None, True], "n": 1.5}


def test_subclasses_of_dict_and_str_are_cleaned_as_their_bases_are() -> None:
    class Text(str):
        pass

    order = _order(buyer_name=Text(f"Bob{HALF}"), raw=OrderedDict(k=[f"a{LOW}"]))

    assert order.buyer_name == "Bob\ufffd"
    assert order.raw == {"k": ["a\ufffd"]}


def test_a_surrogate_pair_is_joined_into_its_character_and_other_text_is_untouched() -> None:
    address = Address(name="Jo\u00e3o \ud83d\ude00", line1="Stra\u00dfe 1 \u6771\u4eac \U0001f600")

    assert address.name == "Jo\u00e3o \U0001f600"
    assert address.line1 == "Stra\u00dfe 1 \u6771\u4eac \U0001f600"


@given(st.text(st.characters(categories=["Cs", "Lu", "Ll", "Zs", "So", "Nd"]), max_size=40))
def test_every_cleaned_string_encodes_as_utf8_and_clean_text_is_kept(text: str) -> None:
    name = Address(name=text).name
    assert name is not None

    name.encode("utf-8")  # raises UnicodeEncodeError on any surrogate left
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        assert name == text
    else:
        assert len(name) <= len(text)


def test_a_shopify_webhook_with_an_escaped_half_pair_maps_to_a_label_request_that_encodes() -> None:
    # given the body as the marketplace sends it: JSON with a \ud800 escape in the street
    payload = shopify_order("rest-2026-07/order.get.json")
    payload["shipping_address"]["address1"] = "Chestnut Street 92 \ud800"
    body = json.dumps(payload)  # ensure_ascii: the escape, as on the wire
    assert "\\ud800" in body

    # when it is mapped and a label request is built from its address
    order = map_order(json.loads(body), "shop")
    assert order.shipping_address is not None
    request = label_request(
        shipment_ref="order-1",
        service_code="ups_ground",
        ship_to=order.shipping_address,
        ship_from=Address(name="Seller", line1="1 Road", city="Town", postal_code="1",
                          country_code="US"),
        parcel=Parcel(weight_grams=400, length_cm=30, width_cm=20, height_cm=10),
    )  # fmt: skip

    # then the request encodes (httpx encodes JSON bodies as UTF-8) with U+FFFD in the street
    sent = httpx.Request("POST", "https://carrier.example/v1/labels", json=request)
    assert json.loads(sent.content)["shipment"]["ship_to"]["address_line1"] == (
        "Chestnut Street 92 \ufffd"
    )
    assert order.raw["shipping_address"]["address1"] == "Chestnut Street 92 \ufffd"


@given(st.text(st.characters(exclude_categories=())))
def test_json_text_said_free_of_surrogates_parses_to_strings_utf8_can_encode(text: str) -> None:
    # JSON as a marketplace sends it: every character escaped, or sent as UTF-8 and decoded as
    # an HTTP client does (what UTF-8 cannot carry arrives replaced)
    escaped = json.dumps(text)
    received = json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass")
    for body in (escaped, received.decode("utf-8", "replace")):
        if not may_hold_surrogates(body):
            json.loads(body).encode("utf-8")  # raises on a surrogate
    if _SURROGATE.search(text):
        assert may_hold_surrogates(escaped)


def test_escapes_that_can_make_a_surrogate_are_found_in_either_case() -> None:
    assert may_hold_surrogates('{"a": "x\\ud800"}')
    assert may_hold_surrogates('{"a": "\\uDC00"}')
    assert may_hold_surrogates('{"a": "\\ud83d\\ude00"}')  # a pair: checked, then joined
    assert not may_hold_surrogates('{"a": "Jo\\u00e3o \u6771"}')
    # the bulk export's lines are checked as bytes, by the same rule
    assert may_hold_surrogates(b'{"a": "x\\ud800"}')
    assert may_hold_surrogates(b'{"a": "\\uDC00"}')
    assert not may_hold_surrogates('{"a": "Jo\\u00e3o \u6771"}'.encode())


def test_models_made_from_checked_text_skip_the_check_and_others_do_not() -> None:
    with from_checked_text():
        trusted = Address(name="plain")
    checked = Address(name=f"x{HALF}")

    assert trusted.name == "plain"
    assert checked.name == "x\ufffd"  # the context ended: the check is back
