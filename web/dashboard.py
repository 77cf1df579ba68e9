"""The staff dashboard: counts by state, what is stuck and why, recent orders (server-rendered)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from db.models import ChannelAccount, InboxEvent, Order
from db.session import get_sessionmaker
from orders.states import InboxStatus, OrderState
from web.api import summary

__all__ = ["router"]

router = APIRouter(tags=["dashboard"])
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    with get_sessionmaker()() as session:
        counts = summary(session)
        failed = session.execute(
            select(InboxEvent, ChannelAccount.name)
            .join(ChannelAccount, ChannelAccount.id == InboxEvent.channel_account_id)
            .where(InboxEvent.status == InboxStatus.FAILED)
            .order_by(InboxEvent.id.desc())
            .limit(50)
        ).all()
        attention = session.scalars(
            select(Order)
            .where(Order.state == OrderState.NEEDS_ATTENTION)
            .order_by(Order.updated_at.desc())
            .limit(50)
        ).all()
        recent = session.scalars(select(Order).order_by(Order.id.desc()).limit(25)).all()
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "counts": counts,
                "states": list(OrderState),
                "failed": failed,
                "attention": attention,
                "recent": recent,
            },
        )
