"""Official WooCommerce sample payloads (../shared/fixtures/official/woocommerce)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = (
    Path(__file__).resolve().parents[4] / ".." / "shared" / "fixtures" / "official" / "woocommerce"
)


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))
