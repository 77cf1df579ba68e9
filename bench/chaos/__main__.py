"""The chaos suite: ``python -m bench.chaos`` (``ordersync chaos`` runs this).

``python -m bench.chaos [--scenario NAME ...] [--profile short|long] [--seed N] [--json]
[--postgres-url URL]``

Each scenario runs on a system of its own: a fresh PostgreSQL database (created on the
server of ``--postgres-url``, default ``$ORDERSYNC_TEST_POSTGRES_URL`` or
``postgresql+psycopg://postgres@127.0.0.1:5432/test``, dropped after), a redis-server of its
own on a free port, the sandbox, the web app, N workers and Beat. Load flows, the fault is
injected, the fault heals, the run waits until quiet, and every invariant is checked from our
database, the sandbox's ledgers and Redis. One row per scenario: orders, faults injected,
each invariant OK or the ids that break it, seconds from the heal to quiet. Exit 1 when an
invariant breaks. ``--seed`` repeats a run's choices (which worker dies, which orders are
cancelled; the processes' timing is not repeatable).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.chaos.harness import PROFILES, Profile, Run, own_postgres, world_for
from bench.chaos.invariants import INVARIANTS, check_all
from bench.chaos.scenarios import SCENARIOS, make

__all__ = ["main", "run_scenario"]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
#: the short profile leaves this one out: a worker stopped past a 60 s visibility timeout
LONG_ONLY = ("visibility_timeout",)


def run_scenario(
    name: str, profile: Profile, seed: int, admin_url: str, var_dir: Path
) -> dict[str, Any]:
    scenario = make(name)
    rng = random.Random(f"{seed}:{name}")
    began = time.monotonic()
    with ExitStack() as stack:
        postgres = None
        if scenario.own_postgres:  # a server of the run's own, which the scenario restarts
            postgres = stack.enter_context(own_postgres(var_dir / "postgres"))
            admin_url = postgres.admin_url
        world, server, db_name = stack.enter_context(world_for(
            admin_url, var_dir, seed=seed, workers=profile.workers, extra_env=scenario.env
        ))  # fmt: skip
        run = Run(world, server, db_name, admin_url, profile, rng, postgres_server=postgres)
        phases = {"start": time.monotonic() - began}
        run.connect_accounts()
        scenario.start(run)
        for round_ in range(profile.rounds):
            run.load_round()
            scenario.during(run, round_)
        phases["load"] = time.monotonic() - began - sum(phases.values())
        run.restock()
        run.wait(run.settled, profile.settle_timeout_s, "every order ready or on hold")
        phases["settle"] = time.monotonic() - began - sum(phases.values())
        acted = run.staff_act()
        scenario.during(run, -1)
        scenario.heal(run)
        healed = time.monotonic()
        deadline = healed + profile.quiet_timeout_s
        # orders held up by the fault reach ready later: staff act on them as they come
        while not run.quiet() and time.monotonic() < deadline:
            if run.settled() and run.states()["ready_to_ship"]:
                acted += run.staff_act()
            run.poll_now()
            time.sleep(0.5)
        quiet = run.quiet()
        to_quiet = time.monotonic() - healed
        if not quiet:
            run.notes.append(
                f"not quiet {profile.quiet_timeout_s:.0f} s after the heal: {dict(run.states())}"
            )
        phases["heal+quiet"] = time.monotonic() - began - sum(phases.values())
        # drained while Beat still runs (its sweeper puts back what a dead worker held),
        # then without it (a scheduled poll sent meanwhile is not a leftover)
        if not run.wait(run.drained, 30, "the queues to drain"):
            run.notes += [f"held: {held}" for held in run.held()]
            run.notes += [f"busy: {busy}" for busy in run.busy()]
        stuck_beats = run.stop_beats()
        run.wait(run.drained, 15, "the queues to drain after Beat stopped")
        facts = run.facts()
        scenario.finish(run)
        broken = check_all(facts)
        if any(broken.values()):  # read before the database is dropped
            run.keep_evidence(var_dir / "evidence.json")
            run.notes.append(f"evidence: {var_dir / 'evidence.json'}")
        phases["drain+facts"] = time.monotonic() - began - sum(phases.values())
        # a process that exited without being killed by the scenario (Beats are stopped above)
        died = [
            c.name
            for c in world.stack.group.dead()
            if not c.name.startswith("beat") and c.name not in run.killed
        ] + stuck_beats
    return {
        "scenario": name,
        "orders": len(run.sent),
        "staff_actions": acted,
        "faults": dict(run.faults),
        "invariants": broken,
        "quiet": quiet,
        "died": died,
        "seconds_to_quiet": round(to_quiet, 1),
        "seconds": round(time.monotonic() - began, 1),
        "notes": run.notes,
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "logs": str(var_dir / "logs"),
    }


def ok(result: dict[str, Any]) -> bool:
    return result["quiet"] and not result.get("died") and not any(result["invariants"].values())


def render(results: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="ordersync chaos", show_lines=True)
    for column in ("scenario", "orders", "faults injected", "invariants", "to quiet"):
        table.add_column(column, overflow="fold")
    for r in results:
        faults = "\n".join(f"{k}: {v}" for k, v in r["faults"].items()) or "-"
        lines = []
        for name, ids in r["invariants"].items():
            if ids:
                more = f" (+{len(ids) - 3})" if len(ids) > 3 else ""
                lines.append(f"[red]{name}: {'; '.join(ids[:3])}{more}[/red]")
        broken = len(lines)
        lines.insert(0, f"{len(INVARIANTS) - broken}/{len(INVARIANTS)} OK")
        if r.get("died"):
            lines.append(f"[red]died on their own: {', '.join(r['died'])}[/red]")
        lines += [f"[yellow]{note}[/yellow]" for note in r["notes"]]
        quiet = f"{r['seconds_to_quiet']} s" if r["quiet"] else "[red]never[/red]"
        table.add_row(r["scenario"], str(r["orders"]), faults, "\n".join(lines), quiet)
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "all"],
        help=f"repeatable; default all (the short profile: all but {', '.join(LONG_ONLY)})",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("ORDERSYNC_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, doc in SCENARIOS.items():
            print(f"{name:20} {' '.join(doc.split())}")
        return 0
    profile = PROFILES[args.profile]
    names = [n for n in (args.scenario or ["all"]) if n != "all"]
    if not names:
        names = [n for n in SCENARIOS if profile.name == "long" or n not in LONG_ONLY]
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    root = ROOT / "var" / "chaos" / f"{stamp}-{seed}"
    err = Console(stderr=True)
    err.print(f"chaos: profile {profile.name}, seed {seed}, logs under {root}")
    results = []
    for name in names:
        err.print(f"[bold]{name}[/bold] …")
        try:
            result = run_scenario(name, profile, seed, args.postgres_url, root / name)
        except Exception as exc:  # the harness itself failed: a row that says so, and where
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / "harness-error.txt").write_text(traceback.format_exc())
            result = {
                "scenario": name,
                "orders": 0,
                "faults": {},
                "quiet": False,
                "invariants": {},
                "seconds_to_quiet": None,
                "seconds": None,
                "notes": [
                    f"did not run: {type(exc).__name__}: {exc}",
                    f"traceback: {root / name / 'harness-error.txt'}",
                ],
            }
        err.print(f"  {'OK' if ok(result) else 'BROKEN'} in {result['seconds']} s")
        for invariant, ids in result["invariants"].items():  # as it goes, not only at the end
            if ids:
                err.print(f"    {invariant}: {'; '.join(ids[:3])}", markup=False)
        for line in result["notes"] + [f"died: {c}" for c in result.get("died") or []]:
            err.print(f"    {line}", markup=False)
        results.append(result)
    render(results, err if args.json else Console())
    if args.json:
        print(json.dumps({"profile": profile.name, "seed": seed, "results": results}))
    return 0 if all(ok(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
