"""The users commands as an operator runs them: a user made with a password from stdin, a token
printed once that the API then takes, its revocation, and the audit log naming who did each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.settings import get_settings
from db.migrate import upgrade
from web.app import create_app

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_a_user_and_a_token_made_on_the_command_line_work_until_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'ordersync.db'}"
    upgrade(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSYNC_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "ORDERSYNC_VAR_DIR": str(tmp_path),
        "ORDERSYNC_DATABASE_URL": url,
        "ORDERSYNC_REDIS_URL": "redis://127.0.0.1:1/0",
    }

    def run(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "ordersync", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            input=stdin,
        )
        assert done.returncode == 0, done.stderr
        return done

    run(
        "users",
        "add",
        "grace",
        "--role",
        "operator",
        "--as",
        "root-admin",
        stdin="a long enough password\n",
    )
    created = run(
        "users", "token", "create", "grace", "--name", "nightly-export", "--role", "viewer"
    )
    token = created.stdout.strip()
    assert token.startswith("os_") and token not in created.stderr  # stdout only, once

    monkeypatch.setenv("ORDERSYNC_DATABASE_URL", url)
    monkeypatch.setenv("ORDERSYNC_VAR_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        client = TestClient(create_app(), base_url="http://ordersync.local")
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/summary", headers=auth).status_code == 200
        # a viewer token of an operator: it reads, it does not act
        assert (
            client.put("/api/stock/SKU-1", params={"on_hand": 3}, headers=auth).status_code == 403
        )

        (user,) = json.loads(run("users", "list", "--json").stdout)
        assert user["name"] == "grace" and user["role"] == "operator"
        (listed,) = user["tokens"]
        assert listed["name"] == "nightly-export" and token not in json.dumps(user)
        run("users", "token", "revoke", str(listed["id"]), "--as", "root-admin")
        assert client.get("/api/summary", headers=auth).status_code == 401
    finally:
        get_settings.cache_clear()

    oldest_first = list(reversed(json.loads(run("audit", "--json").stdout)))
    creator = oldest_first[1]["actor"]
    assert [(a["actor"], a["action"]) for a in oldest_first] == [
        ("root-admin", "user.add"),
        (creator, "token.create"),
        # the token's first request of the minute (one row per token per minute)
        ("grace (token nightly-export)", "token.used"),
        ("root-admin", "token.revoke"),
    ]
    assert creator.endswith("(cli)")  # no --as: the login name
