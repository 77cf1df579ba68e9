"""Official WooCommerce sample payloads (``tests/fixtures/official/woocommerce``)."""

from __future__ import annotations

import json
from typing import Any

from tests.fixtures.official import OFFICIAL

FIXTURES = OFFICIAL / "woocommerce"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))
