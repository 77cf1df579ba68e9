"""The streaming signature check says exactly what the whole-body check says, however the body
is cut into chunks (the web process feeds it chunk by chunk and never holds a bad body)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from integrations.shopify import webhooks as shopify
from integrations.signing import HmacCheck
from integrations.woocommerce import webhooks as woo

SECRETS = st.text(min_size=0, max_size=12)


def _fed(check: HmacCheck, body: bytes, cuts: list[int]) -> bool:
    start = 0
    for cut in [*sorted({c % (len(body) + 1) for c in cuts}), len(body)]:
        check.update(body[start:cut])
        start = cut
    return check.valid()


@given(secret=SECRETS, body=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300)))
def test_a_shopify_signature_streamed_agrees_with_the_whole_body_check(
    secret: str, body: bytes, cuts: list[int]
) -> None:
    good = shopify.sign(secret, body)
    for header in (good, good[:-2] + "AA", None, ""):
        expected = shopify.verify_signature(secret, body, header)
        assert _fed(shopify.body_check(secret, header), body, cuts) == expected
    assert _fed(shopify.body_check(secret, good), body, cuts) == bool(secret)


@given(body=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300)))
def test_a_woocommerce_signature_made_with_the_escaped_or_the_plain_secret_passes_streamed(
    body: bytes, cuts: list[int]
) -> None:
    stored = "s&amp;cret"  # WordPress keeps the secret HTML-escaped; Woo signs with it decoded
    for signing_secret in (stored, "s&cret"):
        header = woo.sign(signing_secret, body)
        assert woo.verify_signature(stored, body, header)
        assert _fed(woo.body_check(stored, header), body, cuts)
    assert not _fed(woo.body_check(stored, woo.sign("other", body)), body, cuts)
