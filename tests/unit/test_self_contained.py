"""The repository stands alone: no file of the project reads a path outside its own tree.

A user's clone has nothing beside it, so a fixture, spec or document reached through ``..``
from the repository root (or an absolute path of this machine) fails for everyone else. This
scans every tracked text file of the project for such paths.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# a path that climbs out of the tree or names this machine's layout
OUTSIDE = re.compile(r"\.\./shared|[\"']shared[\"']\s*/|/\s*[\"']shared[\"']|/work/")
# Path(__file__)...parents[N]: N must stay inside the repository for the file's own depth
PARENTS = re.compile(r"Path\(__file__\)\.resolve\(\)\.parents\[(\d+)\]((?:\.parent)*)")
# provenance notes may name where a copy came from; they are documents, not readers
PROVENANCE = {"tests/fixtures/official/SOURCES.md"}


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    suffixes = {".py", ".toml", ".ini", ".cfg", ".sh", ".md", ".txt", ""}
    return [
        ROOT / name
        for name in listed
        if Path(name).suffix in suffixes
        and name not in PROVENANCE
        and (ROOT / name).is_file()
        and not name.startswith("tests/fixtures/official/")
    ]


def test_no_project_file_names_a_path_outside_the_repository() -> None:
    offenders = []
    for path in _tracked_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line) and path.name != Path(__file__).name:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_no_module_climbs_above_the_repository_root_from_its_own_file() -> None:
    offenders = []
    for path in _tracked_text_files():
        if path.suffix != ".py":
            continue
        depth = len(path.relative_to(ROOT).parts) - 1  # parents[depth] is the root
        for match in PARENTS.finditer(path.read_text(encoding="utf-8")):
            climb = int(match.group(1)) + match.group(2).count(".parent")
            if climb > depth:
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert offenders == []


def test_the_official_fixtures_the_tests_read_are_in_the_repository() -> None:
    official = ROOT / "tests" / "fixtures" / "official"
    assert (official / "SOURCES.md").is_file()
    for name in (
        "shopify/order.json",
        "shopify/rest-2026-07/order.get.json",
        "woocommerce/order.retrieve.json",
        "amazon/getOrder.200.sandbox-1.json",
        "ebay/spec/sell_fulfillment_v1_oas3.v1.20.7.json",
    ):
        assert (official / name).is_file(), name
