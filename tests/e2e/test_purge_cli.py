"""``ordersync purge``: counts with ``--dry-run``, removes without it, and Beat runs it daily."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from db.base import utcnow
from db.models import IdempotencyKey, InboxEvent
from domain.states import InboxStatus
from tests.support.shop import Shop
from workflows.celery_app import app

ROOT = Path(__file__).resolve().parents[2]


def _purge(url: str, tmp_path: Path, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSYNC_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "ORDERSYNC_VAR_DIR": str(tmp_path),
        "ORDERSYNC_DATABASE_URL": url,
        "ORDERSYNC_REDIS_URL": "redis://127.0.0.1:1/0",  # never needed
    }
    argv = [sys.executable, "-m", "ordersync", "purge", "--json", *args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_purge_counts_on_a_dry_run_and_removes_without_one(
    migrated_url: str, tmp_path: Path
) -> None:
    shop = Shop(migrated_url)
    old = utcnow() - dt.timedelta(days=400)
    with shop.transaction() as session:
        session.add(
            InboxEvent(
                channel_account_id=shop.account.id,
                channel="shopify",
                topic="orders/create",
                dedupe_key="d1",
                body=b"{}",
                status=InboxStatus.PROCESSED.value,
                received_at=old,
            )
        )
        session.add(IdempotencyKey(key="capture:9", request_hash="h", recovery_point="finished",
                                   created_at=old))  # fmt: skip
    shop.engine.dispose()

    counted = _purge(migrated_url, tmp_path, "--dry-run")
    removed = _purge(migrated_url, tmp_path)
    again = _purge(migrated_url, tmp_path)

    assert counted == {"dry_run": True, "inbox_bodies": 1, "carrier_bodies": 0, "orders": 0,
                       "label_pdfs": 0, "idempotency_keys": 1, "login_attempts": 0}  # fmt: skip
    assert removed == {**counted, "dry_run": False}
    assert again == {**removed, "inbox_bodies": 0, "idempotency_keys": 0}


def test_beat_runs_the_purge_daily() -> None:
    entry = app.conf.beat_schedule["daily-purge"]
    assert entry["task"] == "ordersync.maintenance.purge"
    assert entry["task"] in app.tasks
