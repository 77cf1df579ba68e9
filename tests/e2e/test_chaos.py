"""The chaos suite end to end, at a tiny size: real processes (web, two workers, Beat, an own
redis-server, a fresh PostgreSQL database), a load from the sandbox marketplaces, a fault, then
every invariant checked after quiet. Three scenarios: a worker SIGKILLed mid-run, pool
processes SIGKILLed at crash points (around outside calls and commits), and poison (an
unreadable webhook, one that kills its worker, and unreadable queue items; these stopped the
workers, or looped, before ``workflows.broker`` and the delivery bound)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.chaos.__main__ import ok, run_scenario
from bench.chaos.harness import PROFILES

pytestmark = pytest.mark.slow

TINY = dataclasses.replace(PROFILES["short"], name="tiny", rounds=1, per_channel=2)


@pytest.mark.parametrize("scenario", ["worker_kill", "kill_points", "poison"])
def test_a_scenario_ends_quiet_with_every_invariant_holding(
    scenario: str, postgres_admin_url: str, tmp_path: Path
) -> None:
    result = run_scenario(scenario, TINY, 7, postgres_admin_url, tmp_path)

    assert result["orders"] == 8  # two from each marketplace
    assert sum(result["faults"].values()) > 0  # the fault was injected
    broken = {name: ids for name, ids in result["invariants"].items() if ids}
    assert broken == {}, (broken, result["notes"])
    assert result["quiet"], result["notes"]
    assert result["died"] == []  # no worker stopped but those the scenario killed
    assert ok(result)
