"""The README's demo command on the embedded defaults: a SQLite file under var/ and a
redis-server that ordersync starts itself (no URL set)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_on_embedded_defaults_reports_every_order_and_matching_ledgers(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSYNC_")}
    env["PYTHONPATH"] = str(ROOT)
    env["ORDERSYNC_WEB_PORT"] = "0"  # any free port: never collide with a running ordersync

    result = subprocess.run(
        [sys.executable, "-m", "ordersync", "demo", "--orders", "40", "--json", "--timeout", "180"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["orders_sent"] == summary["orders_created"] == 40
    assert summary["failed"] == 0
    assert set(summary["by_channel"]) == {"shopify", "woocommerce", "amazon", "ebay"}
    assert sum(summary["by_state"].values()) == 40
    assert set(summary["by_state"]) <= {"ready_to_ship", "on_hold"}
    assert summary["captures_in_ledger"] == summary["paid_orders"] > 0
    assert summary["labels_in_ledger"] == summary["documented_orders"] > 0
    assert summary["invoice_gaps"] == 0
    assert summary["duplicates_absorbed"] >= 0
    # the nightly full sync found nothing the webhooks and polls had missed
    report = summary["reconcile_report"]
    assert report is not None, result.stderr[-3000:]
    assert (report["accounts"], report["seen"], report["created"], report["errors"]) == (
        4,
        40,
        0,
        0,
    )
    # and the demo's staff login was printed
    assert "dashboard login: demo / " in result.stderr
    # the embedded setup lives under var/ and the embedded redis-server is gone afterwards
    assert (tmp_path / "var" / "ordersync.db").exists()
    assert not (tmp_path / "var" / "redis" / "embedded.json").exists()
