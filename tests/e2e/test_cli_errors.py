"""Every operator mistake is one clear line on stderr and a non-zero exit, never a traceback.

Table-driven: each case runs the real ``ordersync`` command (``python -m ordersync``) in a
process of its own, against a migrated SQLite database holding one Shopify account, one Amazon
account without credentials and a SKU with units held by open orders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from db.migrate import upgrade

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LONG_NAME = "n" * 150


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    says: str  # a piece of the one line the operator reads
    env: dict[str, str] = field(default_factory=dict)
    stdin: str = ""  # what is typed (a password)


CASES = [
    # configuration
    Case("database-url-not-a-url", ["orders", "list"], "is not a database URL",
         {"ORDERSYNC_DATABASE_URL": "notaurl"}),
    Case("database-unreachable", ["orders", "list"], "database not reachable",
         {"ORDERSYNC_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none"}),
    Case("web-with-unreachable-database", ["web"], "database not reachable",
         {"ORDERSYNC_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none"}),
    Case("worker-with-unmigrated-database", ["worker"], "run `ordersync db upgrade`",
         {"ORDERSYNC_DATABASE_URL": "sqlite:///{tmp}/empty.db"}),
    Case("sqlite-in-a-missing-directory", ["orders", "list"], "does not exist",
         {"ORDERSYNC_DATABASE_URL": "sqlite:///{tmp}/no/such/dir/x.db"}),
    Case("redis-url-http", ["orders", "list"], "is not a Redis URL",
         {"ORDERSYNC_REDIS_URL": "http://cache:6379"}),
    Case("redis-url-garbage-worker", ["worker"], "is not a Redis URL",
         {"ORDERSYNC_REDIS_URL": "garbage"}),
    Case("web-port-not-a-number", ["orders", "list"], "ORDERSYNC_WEB_PORT",
         {"ORDERSYNC_WEB_PORT": "abc"}),
    Case("worker-concurrency-zero", ["orders", "list"], "ORDERSYNC_WORKER_CONCURRENCY",
         {"ORDERSYNC_WORKER_CONCURRENCY": "0"}),
    Case("log-level-unknown", ["orders", "list"], "is not a log level",
         {"ORDERSYNC_LOG_LEVEL": "LOUD"}),
    Case("park-bound-past-visibility-timeout", ["worker"], "ORDERSYNC_PARK_AFTER_S",
         {"ORDERSYNC_PARK_AFTER_S": "3500"}),
    # accounts
    Case("account-duplicate", ["accounts", "add", "shopify", "taken", "--webhook-secret", "x"],
         "exists already"),
    Case("account-name-too-long", ["accounts", "add", "amazon", LONG_NAME], "at most 100"),
    Case("account-name-empty", ["accounts", "add", "amazon", ""], "needs a name"),
    Case("account-webhook-channel-without-secret", ["accounts", "add", "shopify", "s2"],
         "--webhook-secret"),
    Case("account-bad-api-base-url", ["accounts", "add", "amazon", "a1", "--api-base-url", "x"],
         "--api-base-url"),
    Case("account-test-unknown", ["accounts", "test", "nobody"], "no account named 'nobody'"),
    Case("account-test-without-credentials", ["accounts", "test", "bare"], "credential"),
    # stock
    Case("stock-negative", ["stock", "set", "SKU-1", "-5"], "between 0 and"),
    Case("stock-below-reserved", ["stock", "set", "HELD", "1"], "reserved"),
    Case("stock-sku-too-long", ["stock", "set", "S" * 101, "5"], "1 to 100 characters"),
    Case("stock-over-int32", ["stock", "set", "SKU-1", str(2**31)], "between 0 and"),
    Case("stock-unknown-location", ["stock", "set", "SKU-1", "5", "--location", "north"],
         "no stock location 'north' (known: main)"),
    Case("stock-location-duplicate", ["stock", "add-location", "main"], "exists already"),
    Case("account-locations-unknown", ["accounts", "locations", "taken", "main", "north"],
         "no stock location 'north'"),
    Case("account-locations-twice", ["accounts", "locations", "taken", "main", "main"],
         "named twice"),
    Case("account-locations-and-every", ["accounts", "locations", "taken", "main", "--every"],
         "not both"),
    # orders
    Case("retry-unknown-order", ["orders", "retry", "999999"], "order 999999 does not exist"),
    Case("list-negative-limit", ["orders", "list", "--limit", "-1"], "--limit"),
    Case("list-unknown-state", ["orders", "list", "--state", "nonsense"], "'nonsense'"),
    # users and tokens
    Case("user-unknown-role", ["users", "add", "zed", "--role", "king"], "unknown role 'king'",
         stdin="a long enough password\n"),
    Case("user-short-password", ["users", "add", "zed"], "at least 10 characters", stdin="short\n"),
    Case("user-duplicate", ["users", "add", "vera"], "exists already",
         stdin="a long enough password\n"),
    Case("user-name-with-space", ["users", "add", "ve ra"], "no spaces",
         stdin="a long enough password\n"),
    Case("user-disable-unknown", ["users", "disable", "nobody"], "no user named 'nobody'"),
    Case("user-reset-unknown", ["users", "reset-password", "nobody"], "no user named 'nobody'",
         stdin="a long enough password\n"),
    Case("token-above-the-users-role", ["users", "token", "create", "vera", "--name", "ci",
                                        "--role", "admin"], "vera is viewer"),
    Case("token-for-unknown-user", ["users", "token", "create", "nobody", "--name", "ci"],
         "no user named 'nobody'"),
    Case("token-revoke-unknown", ["users", "token", "revoke", "999"], "no token with id 999"),
    # staff actions
    Case("cancel-unknown-order", ["orders", "cancel", "999999", "-r", "x"], "no order 999999"),
    Case("cancel-without-reason", ["orders", "cancel", "1"], "--reason"),
    Case("hold-unknown-order", ["orders", "hold", "999999", "-r", "x"], "999999 does not exist"),
    Case("release-unknown-order", ["orders", "release", "999999"], "order 999999 does not exist"),
    Case("ship-lines-unknown-order", ["orders", "ship", "999999", "--line", "A=1"],
         "no order 999999"),
    Case("ship-lines-not-a-number", ["orders", "ship", "1", "--line", "A=two"],
         "units must be a whole number"),
    Case("ship-lines-and-shipments", ["orders", "ship", "1", "-s", "1", "--line", "A=1"],
         "--shipment or --line, not both"),
    Case("ship-unknown-order", ["orders", "ship", "999999"], "no order 999999"),
    Case("mark-shipped-unknown-order",
         ["orders", "mark-shipped", "999999", "-t", "T1", "-c", "dhl"], "999999 does not exist"),
    Case("void-label-unknown-shipment", ["orders", "void-label", "999999"], "no shipment 999999"),
    Case("label-unknown-shipment", ["orders", "label", "999999", "-o", "l.pdf"], "no label in use"),
    Case("outbox-retry-unknown", ["outbox", "retry", "999999"], "no outbox message 999999"),
]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{tmp / 'ordersync.db'}"
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO channel_accounts (name, channel, shop, webhook_secret, credentials,"
                " rate_limits, active, created_at) VALUES"
                " ('taken', 'shopify', 'taken.example', 's', '{}', '{}', 1, CURRENT_TIMESTAMP),"
                " ('bare', 'amazon', 'ATVPDKIKX0DER', NULL, '{}', '{}', 1, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO stock_items (sku, on_hand, reserved, updated_at)"
                " VALUES ('HELD', 5, 3, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO stock_levels (sku, location_id, on_hand, reserved, updated_at)"
                " SELECT 'HELD', id, 5, 3, CURRENT_TIMESTAMP FROM stock_locations"
                " WHERE code = 'main'"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO users (name, password_hash, role, active, session_version,"
                " created_at, updated_at) VALUES ('vera', 'not-a-hash', 'viewer', 1, 1,"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    return tmp


def _run(workdir: Path, case: Case) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSYNC_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "ORDERSYNC_VAR_DIR": str(workdir),
        "ORDERSYNC_DATABASE_URL": f"sqlite:///{workdir / 'ordersync.db'}",
        "ORDERSYNC_REDIS_URL": "redis://127.0.0.1:1/0",  # never needed: nothing may start
    }
    env |= {k: v.format(tmp=workdir) for k, v in case.env.items()}
    return subprocess.run(
        [sys.executable, "-m", "ordersync", *case.argv],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=60, input=case.stdin,
    )  # fmt: skip


def _snapshot(workdir: Path) -> tuple[list[tuple[object, ...]], ...]:
    engine = sa.create_engine(f"sqlite:///{workdir / 'ordersync.db'}")
    with engine.connect() as conn:
        accounts = conn.execute(sa.text("SELECT * FROM channel_accounts ORDER BY id")).all()
        stock = list(conn.execute(sa.text("SELECT * FROM stock_items ORDER BY sku")).all())
        stock += conn.execute(sa.text("SELECT * FROM stock_levels ORDER BY sku")).all()
        stock += conn.execute(sa.text("SELECT * FROM stock_locations ORDER BY id")).all()
        stock += conn.execute(sa.text("SELECT * FROM account_locations")).all()
        users = conn.execute(sa.text("SELECT * FROM users ORDER BY id")).all()
        tokens = conn.execute(sa.text("SELECT * FROM api_tokens ORDER BY id")).all()
    engine.dispose()
    return [tuple(a) for a in accounts], [tuple(s) for s in stock], [tuple(u) for u in users], [
        tuple(t) for t in tokens
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_is_one_line_on_stderr_a_non_zero_exit_and_changes_nothing(
    workdir: Path, case: Case
) -> None:
    # given
    before = _snapshot(workdir)

    # when
    result = _run(workdir, case)

    # then
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert case.says in lines[0]
    assert _snapshot(workdir) == before
