"""Every benchmark in one table: ``python -m bench`` (``ordersync bench`` runs this).

``python -m bench [--profile smoke|full] [--repeat N] [--runs NAME=N ...] [--only NAME ...]
[--json] [--write]``

Each benchmark runs in a process of its own (they set up their own database, Redis and
processes; none may share the CPU with another) with ``--json``, ``--repeat`` times; the table
shows, per figure, the median value with min and max, the baseline measured in the same run,
the ratio, the goal, pass/fail, and what bounds the figure (the process whose CPU the figure
spends most of, or the rate limit it runs against).

- ``smoke``: every benchmark at a tiny size, once (a minute or two: CI runs it to prove they
  all still run; its numbers mean little);
- ``full``: the sizes of ``bench/README.md``, three times.

``--write`` puts the table into ``bench/RESULTS.md`` with the machine, the versions and the
date. Exit code 0 when every benchmark ran (``--strict``: and met its goal).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "Figure", "main"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
RUN_TIMEOUT_S = 4200


@dataclass
class Figure:
    """One row of the table, from one run of one benchmark."""

    name: str
    value: float
    unit: str
    baseline: float | None
    goal: str
    ok: bool
    bound: str


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    args: dict[str, list[str]]  # profile -> arguments
    figures: Callable[[Any], list[Figure]]
    extra_env: dict[str, str] = field(default_factory=dict)


def _heaviest(cpu: dict[str, float]) -> str:
    """The process that spent the most CPU per item: what bounds a CPU-bound figure."""
    role, ms = max(cpu.items(), key=lambda kv: kv[1])
    return f"CPU of {role} ({ms:.2f} ms/item)"


def _intake(result: dict[str, Any]) -> list[Figure]:
    hooks, health = result["phases"]["webhooks"], result["phases"]["healthz"]
    procs = result["web_workers"]
    where = f"{procs} web process{'es' if procs > 1 else ''}, {result['database']}"
    rate_goal, p99_goal = ">= 0.7 x /healthz, or >= 1000/s and p99 <= 50 ms", "<= 50 ms"
    rate_ok, p99_ok = bool(result["goal_met"]), hooks["p99_s"] <= 0.05
    if result["database"].startswith("sqlite"):
        # the laptop set-up (one writer at a time): measured; the goals are PostgreSQL's
        rate_goal = p99_goal = "measured (the goals are PostgreSQL's)"
        rate_ok = p99_ok = True
    return [
        Figure(f"webhook intake, {where}", hooks["per_s"], "webhooks/s", health["per_s"],
               rate_goal, rate_ok, _heaviest(hooks["cpu_ms_per_request"])),
        Figure(f"webhook intake p99, {where}", 1000 * hooks["p99_s"], "ms",
               1000 * health["p99_s"], p99_goal, p99_ok, "queueing behind the CPU above"),
    ]  # fmt: skip


def _pipeline(result: dict[str, Any]) -> list[Figure]:
    pipe, base = result["pipeline"], result.get("baseline") or {}
    cpu = {r["process"]: r["cpu_ms_per_item"] for r in pipe.get("cpu", [])
           if r["process"] != "all of the above"}  # fmt: skip
    ratio_ok = bool(result.get("ratio_pass")) or (
        bool(base) and pipe["per_s"] / base["per_s"] >= 0.5
    )
    where = str(result.get("database", "?")).split(":", 1)[0].split("+", 1)[0].split(" ", 1)[0]
    return [
        Figure(f"pipeline, {where}", pipe["per_s"], "orders/s", base.get("per_s"),
               ">= 0.5 x the bare chain", ratio_ok and pipe["all_completed"],
               _heaviest(cpu) if cpu else "?"),
    ]  # fmt: skip


def _polls(rows: list[dict[str, Any]]) -> list[Figure]:
    figures = []
    for row in rows:
        ok = bool(row.get("ratio_pass") and row.get("throttled_pass") and row.get("orders_match"))
        figures.append(
            Figure(
                f"poll {row['marketplace']}",
                float(row.get("ratio") or 0.0),
                "x the rate limit",
                None,
                ">= 0.9, <= 1% refused",
                ok,
                f"rate limit {row.get('limit', '?')}",
            )
        )
    return figures


def _backfill(result: dict[str, Any]) -> list[Figure]:
    cpu = {r["process"]: r["cpu_ms_per_item"] for r in result["cpu"]
           if r["process"] != "all of the above"}  # fmt: skip
    rss = result["rss_mb"]
    return [
        Figure("backfill intake", result["intake_per_s"], "orders/s", result["baseline_per_s"],
               ">= 2000/s and >= 0.5 x the bulk insert",
               result["intake_per_s"] >= 2000 and result["ratio"] >= 0.5, _heaviest(cpu)),
        Figure("backfill end to end", result["per_s"], "orders/s", None,
               "measured (the goals are the intake's)", True,
               f"the export at the marketplace ({result['export_s']:.1f} s) and the intake"),
        Figure("backfill worker RSS, 100 % / 10 %", result["rss_growth"], "x", None, "<= 1.10",
               result["rss_growth"] <= 1.10, f"worker memory ({rss['after_100']:.0f} MB)"),
        Figure("backfill worker RSS peak, one process", rss["peak_process"], "MB", None,
               "< 300", rss["peak_process"] < 300,
               f"worker memory ({result['worker_processes']} processes: "
               f"{rss['peak']:.0f} MB in all)"),
    ]  # fmt: skip


def _burst(result: dict[str, Any]) -> list[Figure]:
    share, ready = result["share_2xx_within_5s"], result["ready"] == result["webhooks"]
    figures = [
        Figure("burst answered 2xx within 5 s", 100 * share, "%", None, "100 %", share >= 1.0,
               result["burst_bound"]),
        Figure("burst drained", result["drain_per_s"], "orders/s", None,
               "every order ready to ship", ready, result["drain_bound"]),
    ]  # fmt: skip
    for name, rss in result["footprint_mb"].items():
        figures.append(Figure(f"footprint {name}: RSS peak under load (baseline: idle)",
                              rss["peak"], "MB", rss["idle"], "measured", True,
                              "memory of that process"))  # fmt: skip
    return figures


def _stock(result: dict[str, Any]) -> list[Figure]:
    figures = []
    for channel, row in result["channels"].items():
        rate_bound = channel == "amazon"  # one SKU a call at 5/s: the rate limit decides
        figures.append(
            Figure(f"stock calls {channel}", float(row["ratio"] or 0.0), "x the minimum calls",
                   None, "<= 1.2", (row["ratio"] or 0.0) <= 1.2,
                   "the channel's rate limit" if rate_bound else "coalescing per window")
        )  # fmt: skip
        figures.append(
            Figure(f"stock converged {channel}", float(row["from_last_change_s"]),
                   "s after the last change", None, "<= 5 s where the rate limit allows",
                   rate_bound or row["from_last_change_s"] <= 5.0,
                   "rate limit: patchListingsItem 5/s" if rate_bound else "the flush window")
        )  # fmt: skip
    figures.append(
        Figure("stock changes written", float(result["changes_per_s"]), "changes/s",
               float(result["baseline"]["changes_per_s"]), "no goal (baseline: 1 call per "
               "change and channel)", result["mismatches_at_end"] == 0,
               "CPU of the writer (SQLite transactions)")
    )  # fmt: skip
    return figures


def _sweep(result: dict[str, Any]) -> list[Figure]:
    return [
        Figure(f"sweep with {result['orders']:,} orders of history, {result['database']}",
               result["history"]["ms"], "ms", result["empty"]["ms"],
               "<= 2 x the empty database", bool(result["pass"]),
               "the database's reads of the sweeper's searches (one task, in process)"),
    ]  # fmt: skip


BENCHMARKS = (
    # the intake with one web process and with two (as many as the cores), on PostgreSQL (a
    # scratch database; SQLite, said so, where none answers): /healthz is the baseline of
    # each, measured on the same processes
    Benchmark("webhook_intake", "bench.webhook_intake",
              {"smoke": ["--seconds", "2", "--connections", "8"],
               "full": ["--seconds", "10", "--connections", "32", "--web-workers", "1"]},
              _intake),
    Benchmark("webhook_intake_2", "bench.webhook_intake",
              {"smoke": ["--seconds", "2", "--connections", "8", "--web-workers", "2"],
               "full": ["--seconds", "10", "--connections", "32", "--web-workers", "2"]},
              _intake),
    # the laptop set-up, SQLite: measured beside the others, no goal of its own
    Benchmark("webhook_intake_sqlite", "bench.webhook_intake",
              {"smoke": ["--seconds", "2", "--connections", "8", "--sqlite"],
               "full": ["--seconds", "10", "--connections", "32", "--sqlite"]},
              _intake),
    Benchmark("pipeline", "bench.pipeline_throughput",
              {"smoke": ["--orders", "20", "--warmup", "2", "--no-task-stats"],
               "full": ["--orders", "300"]},
              _pipeline),
    # the same on PostgreSQL (the goal is on both databases)
    Benchmark("pipeline_pg", "bench.pipeline_throughput",
              {"smoke": ["--orders", "20", "--warmup", "2", "--no-task-stats", "--postgres"],
               "full": ["--orders", "300", "--postgres"]},
              _pipeline),
    Benchmark("poll", "bench.poll_throughput",
              {"smoke": ["--seconds", "2"], "full": []},
              _polls),
    Benchmark("backfill", "bench.backfill",
              {"smoke": ["--orders", "2000"], "full": ["--orders", "100000"]},
              _backfill),
    # the footprint is measured in the same run: idle before the burst, peak during it
    Benchmark("burst", "bench.burst",
              {"smoke": ["--webhooks", "200", "--seconds", "4", "--drain-timeout", "300"],
               "full": ["--webhooks", "20000", "--seconds", "20"]},
              _burst),
    # the sweeper's cost against the size of the history (PostgreSQL; SQLite where none answers)
    Benchmark("sweep", "bench.sweep",
              {"smoke": ["--orders", "3000", "--sweeps", "5"], "full": []},
              _sweep),
    Benchmark("stock_push", "bench.stock_push",
              {"smoke": ["--changes", "300", "--skus", "30", "--baseline", "4"],
               "full": ["--baseline", "40"]},
              _stock),
)  # fmt: skip


def _run_one(bench: Benchmark, profile: str, extra: Sequence[str]) -> Any:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **bench.extra_env}
    argv = [sys.executable, "-m", bench.module, *bench.args[profile], *extra, "--json"]
    # longer than any benchmark's own limit (the burst's drain may take an hour)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)  # fmt: skip
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{bench.name} exited {done.returncode}: {' | '.join(tail)}")
    out = done.stdout
    return json.loads(out[out.index("{") if out.lstrip().startswith("{") else out.index("[") :])


def _row(runs: list[Figure]) -> dict[str, Any]:
    values = [f.value for f in runs]
    baselines = [f.baseline for f in runs if f.baseline is not None]
    median = statistics.median(values)
    base = statistics.median(baselines) if baselines else None
    last = runs[-1]
    return {
        "figure": last.name, "unit": last.unit, "median": median, "min": min(values),
        "max": max(values), "baseline": base,
        "ratio": median / base if base else None, "goal": last.goal,
        "pass": sum(f.ok for f in runs) * 2 > len(runs), "bound": last.bound, "runs": len(runs),
    }  # fmt: skip


def run(
    profile: str, repeat: int, only: Sequence[str] | None = None,
    runs: dict[str, int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Each benchmark (``only`` those named) ``repeat`` times, or as often as ``runs`` says
    for it."""
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for bench in BENCHMARKS:
        if only and bench.name not in only:
            continue
        per_figure: dict[str, list[Figure]] = {}
        try:
            for _ in range((runs or {}).get(bench.name, repeat)):
                for figure in bench.figures(_run_one(bench, profile, [])):
                    per_figure.setdefault(figure.name, []).append(figure)
        except Exception as exc:  # report it, and go on with the others
            errors[bench.name] = f"{type(exc).__name__}: {exc}"
            continue
        rows += [_row(figures) for figures in per_figure.values()]
    return {
        "profile": profile,
        "repeat": repeat,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "rows": rows,
        "errors": errors,
    }


def _machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    meminfo = Path("/proc/meminfo")
    mem_kb = int(meminfo.read_text().split()[1]) if meminfo.exists() else 0
    return {"cores": os.cpu_count(), "cpu": model, "memory_gb": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average": os.getloadavg()}  # fmt: skip


def _num(value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits if digits is not None else (2 if abs(value) < 10 else 1)}f}"


def render(result: dict[str, Any]) -> str:
    lines = [
        "| figure | value (median) | min to max | runs | baseline | ratio | goal | pass | "
        "bound by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['figure']} | {_num(r['median'])} {r['unit']} | {_num(r['min'])} to "
            f"{_num(r['max'])} | {r['runs']} | {_num(r['baseline'])} | {_num(r['ratio'], 2)} | "
            f"{r['goal']} | {'PASS' if r['pass'] else 'FAIL'} | {r['bound']} |"
        )
    for name, error in result["errors"].items():
        lines.append(f"| {name} | did not run: {error} | | | | | | FAIL | |")
    m = result["machine"]
    lines += ["", f"{result['profile']} profile, {result['repeat']} run(s) each unless the "
              "runs column says otherwise, "
              f"{result['date']}; {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, "
              f"Python {m['python']}, load average before {m['load_average'][0]:.2f}"]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("smoke", "full"), default="full")
    parser.add_argument("--repeat", type=int, default=None, help="runs per benchmark")
    parser.add_argument("--only", action="append", choices=[b.name for b in BENCHMARKS])
    parser.add_argument("--runs", action="append", default=[], metavar="NAME=N",
                        help="runs of one benchmark, instead of --repeat's")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.profile == "smoke" else 3)
    runs: dict[str, int] = {}
    for given in args.runs:
        name, _, count = given.partition("=")
        if name not in {b.name for b in BENCHMARKS} or not count.isdigit() or int(count) < 1:
            parser.error(f"--runs {given}: expected NAME=N with a benchmark's name and N >= 1")
        runs[name] = int(count)
    result = run(args.profile, repeat, args.only, runs)
    table = render(result)
    print(json.dumps(result) if args.json else table)
    if args.write:
        RESULTS.write_text(
            "# Benchmark results\n\nWritten by `python -m bench --write` (`ordersync bench "
            "--write`); what each figure measures: `bench/README.md`.\n\n" + table + "\n"
        )
    if result["errors"]:
        return 2
    return 1 if args.strict and not all(r["pass"] for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
