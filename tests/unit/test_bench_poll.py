"""Smoke test of the polling benchmark's core: one marketplace, tiny numbers, real HTTP.

No timing assertions: the benchmark itself judges the numbers; this checks that it measures
them and that the poll it measures is a complete one.
"""

from __future__ import annotations

import math

from bench.poll_throughput import EbayBench, bench_marketplace, render


def test_one_marketplace_with_tiny_numbers_gives_sane_fields() -> None:
    # given: 30 eBay orders in pages of 5, a limit fast enough for a second or two
    market = EbayBench(rate=20.0, burst=2.0, page_limit=5)

    # when
    row = bench_marketplace(market, orders=30)

    # then: every seeded order came back once, through rate-limited requests
    assert row["marketplace"] == "ebay"
    assert row["orders_seeded"] == 30
    assert row["orders_fetched"] == 30
    assert row["orders_match"] is True
    assert row["requests"] >= 6  # 30 orders / 5 per page, plus any 429 answered
    assert row["by_operation"].get("getOrders 200") == 6
    assert 0 <= row["throttled"] <= row["requests"]
    assert 0.0 <= row["throttled_share"] <= 1.0
    # the limit and the ratio are computed from the run
    assert row["limit_rps"] == 20.0
    assert row["ideal_s"] > 0
    assert isinstance(row["ratio"], float) and math.isfinite(row["ratio"]) and row["ratio"] > 0
    assert row["wall_s"] > 0 and row["achieved_rps"] > 0
    assert isinstance(row["ratio_pass"], bool) and isinstance(row["throttled_pass"], bool)
    # the baseline polls the same orders with no limit
    assert row["baseline"]["orders_fetched"] == 30
    assert row["baseline"]["orders_match"] is True
    assert row["baseline"]["requests"] == 6
    assert row["baseline"]["throttled"] == 0
    # and the table renders it
    assert render([row]).row_count == 1
