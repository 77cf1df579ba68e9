"""The Jinja templates of the staff pages, their filters, and ``render``.

Every page gets ``user`` (who is logged in, if anyone), ``can_act`` (an operator or admin: a
viewer sees no action buttons) and ``csrf`` (the session's CSRF token, put in each form and in
a ``<meta>`` the page's script sends with every action).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from domain.states import OrderState
from orders.users import Role

__all__ = ["HERE", "render", "templates"]

HERE = Path(__file__).parent
CENT = Decimal("0.01")
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _money(value: Decimal | str | None, currency: str = "") -> str:
    if value is None:
        return ""
    amount = Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
    return f"{amount} {currency}".strip()


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _detail(value: Any) -> str:
    """One timeline detail value as text (dicts such as ``short`` as compact JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


templates.env.filters.update(money=_money, when=_when, detail=_detail)


def render(
    request: Request, template: str, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    state = request.scope.get("state", {})
    principal = state.get("principal")
    return templates.TemplateResponse(
        request,
        template,
        {
            "states": list(OrderState),
            "user": principal,
            "can_act": principal is not None and principal.role >= Role.OPERATOR,
            "csrf": state.get("csrf"),
            **context,
        },
        status_code=status_code,
    )
