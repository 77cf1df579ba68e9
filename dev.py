#!/usr/bin/env python3
"""Bootstrap and run ordersync with nothing but Python >= 3.11 installed.

    python3 dev.py demo [--orders N] [--json] [--keep]   run the demo
    python3 dev.py test [pytest args]                     run the test suite
    python3 dev.py run ARGS...                            any `ordersync` command
    python3 dev.py lint                                   ruff, mypy and import-linter
    python3 dev.py lock                                   re-pin requirements.lock from pyproject

The first call creates `.venv/` and installs the pinned, hash-checked dependencies from
`requirements.lock` (re-done whenever the lock or pyproject.toml change). Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("ORDERSYNC_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".ordersync-installed"


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.lock", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, cwd=ROOT)


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (dev.py runs under any python3)
        sys.exit(f"ordersync needs Python >= 3.11; this is {sys.version.split()[0]}")
    fingerprint = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    if not PY.exists():
        print(f"creating {VENV} …", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print("installing pinned dependencies (requirements.lock) …", file=sys.stderr)
    pip = (PY, "-m", "pip", "--disable-pip-version-check", "-q")
    _run(*pip, "install", "--require-hashes", "-r", ROOT / "requirements.lock")
    _run(*pip, "install", "--no-deps", "--no-build-isolation", "-e", ROOT)
    STAMP.write_text(fingerprint)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "lock":
        ensure_venv()
        _run(PY, "-m", "pip", "-q", "install", "uv")
        _run(
            BIN / "uv", "pip", "compile", "pyproject.toml", "--extra", "dev", "--universal",
            "--python-version", "3.11", "--generate-hashes", "-o", "requirements.lock",
        )  # fmt: skip
        return 0
    ensure_venv()
    if command == "test":
        return subprocess.call([str(PY), "-m", "pytest", *rest], cwd=ROOT)
    if command == "demo":
        return subprocess.call([str(BIN / "ordersync"), "demo", *rest], cwd=ROOT)
    if command == "run":
        return subprocess.call([str(BIN / "ordersync"), *rest], cwd=ROOT)
    if command == "lint":
        # the whole tree, each tool over every file (mypy's list is in pyproject.toml); every
        # tool runs so that one run shows every finding, and any finding fails the command
        checks = (
            [BIN / "ruff", "check", "."],
            [BIN / "mypy"],
            [BIN / "lint-imports"],
        )
        codes = [subprocess.call([str(a) for a in argv], cwd=ROOT) for argv in checks]
        return max(codes)
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
