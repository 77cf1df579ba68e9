"""A label's idempotency key and its carrier reference are made in one place
(``orders.fulfilment._label_names``) and read back from a key for the recovery of a purchase
whose answer was lost: every key a shipment's label can have leads to the reference its
purchase went out under."""

from __future__ import annotations

import pytest

from orders.fulfilment import _label_names, _ref_of_key


@pytest.mark.parametrize("shipment", [None, 7, 123456])
@pytest.mark.parametrize("successor", ["", ":2", ":3"])
def test_every_key_of_a_shipments_label_leads_back_to_its_reference(
    shipment: int | None, successor: str
) -> None:
    base, ref = _label_names(42, shipment)

    assert _ref_of_key(42, base + successor) == ref


def test_the_first_shipment_and_the_others_have_their_own_names() -> None:
    assert _label_names(42, None) == ("label:42", "order-42")
    assert _label_names(42, 7) == ("label:42:s7", "order-42-s7")
    assert _ref_of_key(42, "label:42:s7:2") != _ref_of_key(42, "label:42:2")
