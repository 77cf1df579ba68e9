"""The README's demo command on the embedded defaults: a SQLite file under var/ and a
redis-server that ordersync starts itself (no URL set)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, **settings: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSYNC_")}
    env["PYTHONPATH"] = str(ROOT)
    env["ORDERSYNC_WEB_PORT"] = "0"  # any free port: never collide with a running ordersync
    env.update(settings)

    result = subprocess.run(
        [sys.executable, "-m", "ordersync", "demo", "--orders", "40", "--json", "--timeout", "180"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    # the nightly full sync found nothing the webhooks and polls had missed, and every order it
    # compared with ours agreed (nothing flagged)
    report = summary["reconcile_report"]
    assert report is not None, result.stderr[-3000:]
    assert (report["accounts"], report["seen"], report["created"], report["flagged"],
            report["errors"]) == (4, 40, 0, 0, 0)  # fmt: skip
    # and the demo's staff login was printed
    assert "dashboard login: demo / " in result.stderr
    return summary


def _check(summary: dict[str, Any]) -> None:
    assert summary["orders_sent"] == summary["orders_created"] == 40
    assert summary["failed"] == 0
    assert set(summary["by_channel"]) == {"shopify", "woocommerce", "amazon", "ebay"}
    assert sum(summary["by_state"].values()) == 40
    # staff shipped or cancelled every ready order; the carrier delivered what we shipped (an
    # order Amazon ships itself stays shipped: its parcel is not ours to track)
    assert set(summary["by_state"]) <= {"delivered", "shipped", "cancelled", "on_hold"}
    assert summary["delivered"] == summary["by_state"]["delivered"] > 0
    assert summary["captures_in_ledger"] == summary["paid_orders"] > 0
    assert summary["labels_in_ledger"] == summary["documented_orders"] > 0
    assert summary["invoice_gaps"] == 0
    assert summary["duplicates_absorbed"] >= 0
    # every shipment that left is one fulfilment in its marketplace's ledger, some orders in two
    assert summary["fulfilments_in_ledger"] == summary["fulfilments_pushed"]
    assert summary["fulfilments_pushed"] == summary["shipments"] > 0
    assert summary["split_orders"] > 0
    assert summary["cancellations_in_ledger"] == summary["cancellations_pushed"]
    assert summary["cancellations_pushed"] == summary["by_state"]["cancelled"] > 0
    voided = summary["voided_labels"]
    assert voided == summary["voided_in_ledger"] >= summary["cancellations_pushed"]
    assert summary["outbox_undelivered"] == 0
    assert summary["delivery_events_in_ledger"] == summary["deliveries_pushed"] > 0


def test_the_demo_on_embedded_defaults_reports_every_order_and_matching_ledgers(
    tmp_path: Path,
) -> None:
    _check(_demo(tmp_path))
    # the embedded setup lives under var/ and the embedded redis-server is gone afterwards
    assert (tmp_path / "var" / "ordersync.db").exists()
    assert not (tmp_path / "var" / "redis" / "embedded.json").exists()


@pytest.mark.postgres
def test_the_demo_on_postgresql_reports_every_order_and_matching_ledgers(
    tmp_path: Path, postgres_url: str
) -> None:
    _check(_demo(tmp_path, ORDERSYNC_DATABASE_URL=postgres_url))
