"""The alert rules and the Grafana dashboard in deploy/ name only series ordersync exports (a
renamed metric would leave an alert that never fires and a panel that stays empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

import web.metrics
import workflows.metrics  # noqa: F401  (registers the task series)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERIES = re.compile(r"\bordersync_[a-z_]+\b")


def exported() -> set[str]:
    """Every sample name ordersync's processes can expose."""
    names = {name for name, _, _ in web.metrics.GAUGES}
    for family in REGISTRY.collect():  # the counters and histograms (a collector's gauges are
        if not family.name.startswith("ordersync_") or family.type == "gauge":  # above)
            continue
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "count", "sum"))
    return names


def test_every_alert_rule_uses_exported_series_and_says_what_to_do() -> None:
    rules: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    known = exported()
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {a["alert"] for a in alerts} >= {
        "OrdersyncQueueStuck",
        "OrdersyncSyncLagging",
        "OrdersyncNeedsAttentionRising",
        "OrdersyncWebhooksRejected",
    }
    for alert in alerts:
        used = set(SERIES.findall(alert["expr"]))
        assert used and used <= known, (alert["alert"], used - known)
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_every_dashboard_panel_queries_exported_series() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    known = exported()
    shown = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = set(SERIES.findall(target["expr"]))
            assert used and used <= known, (panel["title"], used - known)
            shown |= used
    # every series ordersync exports has a panel
    assert {name.removesuffix("_total").removesuffix("_bucket") for name in shown} >= {
        name.removesuffix("_total")
        .removesuffix("_bucket")
        .removesuffix("_count")
        .removesuffix("_sum")
        for name in known
    } - {"ordersync_sync_never_polled"}
