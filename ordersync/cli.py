"""ordersync: marketplace orders in, stock and status out, every effect exactly once."""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.logging import configure_logging
from core.settings import ConfigError, get_settings, mask_url
from domain.errors import PermanentError
from orders.users import UserError
from ordersync.staff_cli import (
    CliError,
    accounts_cli,
    listings_cli,
    money_cli,
    orders_cli,
    outbox_cli,
    stock_cli,
)
from ordersync.sync_cli import sync_cli
from ordersync.users_cli import audit_cli, users_cli

__all__ = ["main"]

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_cli = typer.Typer(no_args_is_help=True, help="Database migrations.")
cli.add_typer(db_cli, name="db")
cli.add_typer(orders_cli, name="orders")
cli.add_typer(stock_cli, name="stock")
cli.add_typer(outbox_cli, name="outbox")
cli.add_typer(accounts_cli, name="accounts")
cli.add_typer(users_cli, name="users")
cli.add_typer(audit_cli, name="audit")
cli.add_typer(sync_cli, name="sync")
cli.add_typer(money_cli, name="money")
cli.add_typer(listings_cli, name="listings")
console = Console(stderr=True)


def _check_database() -> None:
    """A server that cannot reach its database, or runs on an old schema, does not start."""
    from db.migrate import check_ready

    check_ready()


def _setup_logging() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


@cli.command()
def config(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Print the effective settings (secrets masked)."""
    values = get_settings().masked()
    if as_json:
        print(json.dumps(values, default=str))
        return
    table = Table("setting", "value", title="ordersync settings (env prefix ORDERSYNC_)")
    for key, value in values.items():
        table.add_row(key.upper(), str(value))
    Console().print(table)


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: head)."""
    from core.settings import mask_url
    from db.migrate import upgrade

    upgrade(revision=revision)
    console.print(f"database at {revision}: {mask_url(get_settings().database_url)}")


@db_cli.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (e.g. -1, base)."""
    from db.migrate import downgrade

    downgrade(revision=revision)


@cli.command()
def web(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    workers: Annotated[
        int,
        typer.Option(min=1, max=64, help="web processes on one port (webhook bursts: one a core)"),
    ] = 1,
) -> None:
    """Run the web app: webhooks, staff dashboard, JSON API."""
    import uvicorn

    _setup_logging()
    settings = get_settings()
    _check_database()
    if workers > 1:  # /metrics adds up the webhooks every process counted
        _multiprocess_metrics()
    if settings.web_metrics_port:  # /metrics without a token, where only Prometheus reaches
        from prometheus_client import start_http_server

        from web.metrics import scrape_registry

        start_http_server(
            settings.web_metrics_port, addr=host or settings.web_host, registry=scrape_registry()
        )
    uvicorn.run(
        # an import string, so that each of several processes builds its own app (and sets up
        # its own logging: the processes are new interpreters)
        "web.app:served_app",
        factory=True,
        workers=workers,
        host=host or settings.web_host,
        port=port or settings.web_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
    )


@cli.command()
def worker(
    concurrency: Annotated[int | None, typer.Option("-c", "--concurrency")] = None,
    queues: Annotated[str | None, typer.Option("-Q", "--queues", help="comma-separated")] = None,
    pool: Annotated[str, typer.Option(help="prefork, threads or solo")] = "prefork",
    metrics_port: Annotated[
        int | None,
        typer.Option(help="serve this worker's task metrics here (default WORKER_METRICS_PORT)"),
    ] = None,
    nice: Annotated[
        int | None,
        typer.Option(min=0, max=19, help="CPU niceness, at least (default WORKER_NICE)"),
    ] = None,
) -> None:
    """Run a Celery worker on all queues (or --queues)."""
    _setup_logging()
    settings = get_settings()
    lower_cpu_priority(settings.worker_nice if nice is None else nice)
    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    if port:
        _worker_metrics(port, settings.web_host)
    from workflows import app

    _check_database()
    app.worker_main(
        [
            "worker",
            "--queues", queues or ",".join(settings.queues),
            "--concurrency", str(concurrency or settings.worker_concurrency),
            "--pool", pool,
            "--loglevel", settings.log_level,
            "--hostname", f"ordersync-{os.getpid()}@{socket.gethostname()}",
            "--without-mingle",
            "--without-gossip",
        ]
    )  # fmt: skip


def lower_cpu_priority(niceness: int) -> None:
    """Run this process (and what it forks: the prefork pool) at ``niceness`` at least, so that
    a web process on the same machine answers webhooks first; never raises a priority (that
    needs privileges), and does nothing where the OS has no niceness."""
    if hasattr(os, "setpriority") and niceness > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)


def _multiprocess_metrics() -> None:
    """prometheus_client's multiprocess mode for this process and the ones it starts (a
    directory of its own, removed at exit), so that their counters add up. Runs before anything
    imports prometheus_client, which reads the directory's variable when it is imported."""
    import atexit
    import shutil
    import tempfile

    if "prometheus_client" in sys.modules:
        raise CliError("internal: prometheus_client was imported before the metrics directory")
    directory = tempfile.mkdtemp(prefix=f"metrics-{os.getpid()}-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def _worker_metrics(port: int, host: str) -> None:
    """Multiprocess mode for this worker and its forked pool, and an exporter of their sum on
    ``port``."""
    _multiprocess_metrics()
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)


@cli.command()
def beat() -> None:
    """Run Celery Beat: polls, nightly sync, sweeper. A second Beat waits as a standby (its
    schedule and leader lock are in Redis) and takes over when the first one stops."""
    from workflows import app
    from workflows.beat import run

    _setup_logging()
    settings = get_settings()
    _check_database()
    run(app, settings.log_level)


def _first_user_hint() -> None:
    """On a database with no staff user yet, say how to make the first one (nothing but the
    webhooks and /healthz answers without a login)."""
    from db.session import session_scope
    from orders.users import has_users

    with session_scope() as session:
        if has_users(session):
            return
    console.print(
        "[yellow]No staff user exists yet: every page and the API need a login. Create the "
        "first one with:[/yellow]\n  ordersync users add NAME --role admin"
    )


@cli.command()
def up(
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
) -> None:
    """Run everything in one command: web, worker(s), Beat (and the embedded Redis)."""
    from core.runtime import embedded_redis, redis_url
    from db.migrate import upgrade
    from ordersync.supervisor import ProcessGroup, sigterm_interrupts, stopping

    _setup_logging()
    settings = get_settings()
    redis_url()  # the embedded server when no URL is set; children inherit the URL
    upgrade()
    _first_user_hint()
    group = ProcessGroup(env=dict(os.environ))
    sigterm_interrupts()
    code = 0
    try:
        group.start("web", ["web"])
        for i in range(workers):
            # one exporter per worker: WORKER_METRICS_PORT, the next port, …
            port = settings.worker_metrics_port and settings.worker_metrics_port + i
            group.start(f"worker-{i + 1}", ["worker", "--metrics-port", str(port)])
        group.start("beat", ["beat"])
        console.print(
            f"ordersync is up: http://{settings.web_host}:{settings.web_port}/ (Ctrl-C stops)"
        )
        dead = group.wait()
        console.print(f"[red]{dead.name} exited ({dead.process and dead.process.returncode})")
        code = 1
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        with stopping():
            group.stop()
            embedded_redis().stop()
    raise typer.Exit(code)


@cli.command()
def sandbox(
    port: Annotated[int, typer.Option(help="port of the sandbox server")] = 8900,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    latency: Annotated[float, typer.Option(help="seconds added to every answer")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="share of 503 answers")] = 0.0,
    rate_429: Annotated[float, typer.Option("--429-rate", help="share of 429 answers")] = 0.0,
    timeout_rate: Annotated[float, typer.Option(help="share of answers that hang")] = 0.0,
    orders: Annotated[int, typer.Option(help="orders to seed in each marketplace")] = 20,
) -> None:
    """Run the sandbox marketplaces, payment provider and carrier (try ordersync safely)."""
    from sandbox.knobs import Knobs
    from sandbox.server import Sandbox

    knobs = Knobs(latency_s=latency, error_rate=error_rate, rate_429=rate_429,
                  timeout_rate=timeout_rate)  # fmt: skip
    box = Sandbox(knobs=knobs, host=host, port=port)
    box.shopify.add_orders(orders)
    box.woocommerce.add_orders(orders)
    box.add_amazon_orders(orders)
    box.ebay.add_orders(orders)
    console.print(f"sandbox on {box.url}; connect it with:")
    sandbox_secret = "sandbox-webhook-secret"  # noqa: S105 (a fixed, public sandbox value)
    for channel, spec in box.accounts(webhook_secret=sandbox_secret).items():
        creds = " ".join(f"-c {k}={v}" for k, v in spec.credentials.items() if isinstance(v, str))
        console.print(
            f"  ordersync accounts add {channel} sandbox-{channel} --shop {spec.shop} "
            f"--api-base-url {spec.api_base_url} {creds}",
            soft_wrap=True,
        )
    box.serve_forever()


@cli.command()
def demo(
    orders: Annotated[int, typer.Option(help="orders the sandbox sends")] = 200,
    as_json: Annotated[
        bool, typer.Option("--json", help="summary as JSON on the last line")
    ] = False,
    keep: Annotated[bool, typer.Option(help="leave everything running afterwards")] = False,
    duplicate_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.15,
    timeout: Annotated[float, typer.Option(help="seconds to wait for processing")] = 300.0,
) -> None:
    """Start everything plus the sandbox, send N signed order webhooks, report what happened."""
    from ordersync.demo import run_demo

    code = run_demo(
        orders=orders,
        as_json=as_json,
        keep=keep,
        duplicate_rate=duplicate_rate,
        timeout_s=timeout,
    )
    raise typer.Exit(code)


@cli.command()
def purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only count what would go")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Remove buyer personal data and idempotency keys past retention
    (ORDERSYNC_PERSONAL_DATA_RETENTION_DAYS, ORDERSYNC_IDEMPOTENCY_RETENTION_DAYS); Beat runs it
    daily. Inbox rows, orders, money, invoices and unfinished keys stay."""
    from db.base import utcnow
    from db.session import session_scope
    from orders.retention import purge as purge_past_retention

    settings = get_settings()
    with session_scope() as session:
        report = purge_past_retention(
            session,
            now=utcnow(),
            personal_data_days=settings.personal_data_retention_days,
            idempotency_days=settings.idempotency_retention_days,
            dry_run=dry_run,
        ).as_dict()
    if as_json:
        typer.echo(json.dumps({"dry_run": dry_run, **report}))
        return
    table = Table("what", "would go" if dry_run else "removed")
    for what, count in report.items():
        table.add_row(what.replace("_", " "), str(count))
    Console().print(table)


@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """Run every benchmark and print one table (`python -m bench`: --profile smoke|full,
    --repeat N, --runs NAME=N, --only NAME, --json, --write). Needs a checkout of the
    repository."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "__main__.py").exists():
        raise CliError(
            "ordersync bench needs a checkout of the repository (bench/ is not installed)"
        )
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = subprocess.call([sys.executable, "-m", "bench", *ctx.args], cwd=root, env=env)
    raise typer.Exit(code)


@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def chaos(ctx: typer.Context) -> None:
    """Run the chaos suite: real processes under load, faults injected, every invariant
    checked after quiet (`python -m bench.chaos`: --scenario NAME, --profile short|long,
    --seed N, --json, --list). Needs a checkout of the repository and a PostgreSQL server."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "chaos" / "__main__.py").exists():
        raise CliError(
            "ordersync chaos needs a checkout of the repository (bench/ is not installed)"
        )
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = subprocess.call([sys.executable, "-m", "bench.chaos", *ctx.args], cwd=root, env=env)
    raise typer.Exit(code)


def _one_line(exc: BaseException) -> str:
    """What the operator reads of an error: one line, no traceback, no secret."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, typer.TyperException):  # typer's own click: bad option, argument
        formatted: str = getattr(exc, "format_message", lambda: exc.message)()
        return formatted
    if isinstance(exc, (ConfigError, CliError, PermanentError, UserError)):
        return str(exc)
    if isinstance(exc, sa_exc.ArgumentError):
        return f"ORDERSYNC_DATABASE_URL: {exc}"
    if isinstance(exc, sa_exc.DBAPIError):
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        url = mask_url(get_settings().database_url)
        if "no such table" in first or ("relation" in first and "does not exist" in first):
            return f"database {url} is not migrated: run `ordersync db upgrade` ({first})"
        if isinstance(exc, sa_exc.OperationalError):
            return f"database not reachable ({url}): {first}"
        return f"refused by the database: {first}"
    return f"unexpected {type(exc).__name__}: {exc} (ORDERSYNC_LOG_LEVEL=DEBUG shows the traceback)"


def main(argv: list[str] | None = None) -> None:
    """The console script. Every error ends as one line on stderr and a non-zero exit."""
    try:
        code = cli(args=argv, prog_name="ordersync", standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `ordersync orders`: the help, as click
            typer.echo(exc.message, err=True)
        else:
            typer.echo(f"ordersync: {_one_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("ORDERSYNC_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        typer.echo(f"ordersync: {_one_line(exc)}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
