"""Who may reach which route: every route of the app, enumerated when the test runs.

A route is public only if it is in ``PUBLIC`` below (the webhooks, ``/healthz``, ``/login``,
the static files); any other route, including one added later, must refuse the anonymous
(401, or a redirect to the login page for a page), let a viewer read but not act (403), let an
operator act, refuse a logged-in browser's POST that lacks the CSRF token or comes from another
site, and refuse a revoked token. Runs on SQLite and PostgreSQL, with the real app and a real
Redis (actions publish tasks).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Mount, Route

from core.settings import get_settings
from db.models import ApiToken, AuditEntry, OrderEvent
from db.session import get_sessionmaker
from domain.states import OrderState
from orders.users import Role, create_token, revoke_token
from tests.support.shop import Shop
from tests.support.staff import PASSWORD, bearer, login, new_user, staff_token
from web.app import create_app
from web.auth import is_public

#: the routes anyone may call, and nothing else (the webhooks are no route: web.webhooks'
#: WebhookIntake answers /webhooks/* in front of the app and the gate)
PUBLIC = {"/healthz", "/login", "/static"}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
BASE = "http://ordersync.local"


@dataclass
class Staffed:
    app: FastAPI
    maker: sessionmaker[Session]
    shop: Shop
    order_id: int


@pytest.fixture
def staffed(
    migrated_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Staffed]:
    monkeypatch.setenv("ORDERSYNC_DATABASE_URL", migrated_url)
    monkeypatch.setenv("ORDERSYNC_REDIS_URL", redis_url)
    monkeypatch.setenv("ORDERSYNC_VAR_DIR", str(tmp_path))
    get_settings.cache_clear()
    shop = Shop(migrated_url)
    order_id = shop.order(
        OrderState.NEEDS_ATTENTION,
        failed_step="buy_label",
        last_error="AddressRejected: postal code",
        attempts=3,
        buyer_name="Ada Lovelace",
    )
    yield Staffed(create_app(), get_sessionmaker(migrated_url), shop, order_id)
    shop.engine.dispose()
    get_settings.cache_clear()


def _required_role(route: APIRoute) -> Role | None:
    """The role a route asks for with ``Depends(require(...))``, if any."""
    found: list[Role] = []
    stack = [route.dependant]
    while stack:
        dep = stack.pop()
        role = getattr(dep.call, "required_role", None)
        if isinstance(role, Role):
            found.append(role)
        stack.extend(dep.dependencies)
    return max(found) if found else None


def _calls(app: FastAPI, order_id: int) -> list[tuple[str, str, dict[str, Any], Role | None]]:
    """(method, concrete path, query, required role) of every route that is not public."""
    values = {"order_id": str(order_id), "inbox_id": "1", "sku": "SKU-1"}
    calls = []
    for context in iter_route_contexts(app.routes):  # routers included, with their prefixes
        route, path = context.route, context.path
        assert path, route
        if isinstance(route, Mount):
            assert path in PUBLIC, f"{path}: a mount that is not public"
            continue
        assert isinstance(route, (APIRoute, Route)), route
        concrete = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "x"), path)
        if path in PUBLIC:
            assert is_public(concrete), path
            continue
        assert not is_public(concrete), f"{path} is public but not listed in PUBLIC"
        query: dict[str, Any] = {}
        role = None
        if isinstance(route, APIRoute):
            query = {p.name: 1 for p in route.dependant.query_params if p.field_info.is_required()}
            role = _required_role(route)
        for method in sorted(context.methods or ()):
            if method != "HEAD":
                calls.append((method, concrete, query, role))
    return calls


def test_every_route_but_the_public_ones_refuses_the_anonymous(staffed: Staffed) -> None:
    client = TestClient(staffed.app, base_url=BASE)
    calls = _calls(staffed.app, staffed.order_id)
    assert {"/api/orders", f"/orders/{staffed.order_id}", "/metrics", "/audit"} <= {
        path for _, path, _, _ in calls
    }
    # the webhooks answer for themselves: their signature, not a login
    webhook = client.post("/webhooks/shopify/no-such-shop", content=b"{}")
    assert webhook.json() == {"detail": "invalid signature or unknown account"}
    for method, path, query, _ in calls:
        response = client.request(method, path, params=query, follow_redirects=False)
        if method == "GET" and not path.startswith("/api/") and path != "/metrics":
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"].startswith("/login?next="), path
        else:
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"


def test_a_viewer_reads_every_route_and_acts_on_none(staffed: Staffed) -> None:
    client = TestClient(staffed.app, base_url=BASE)
    headers = bearer(staff_token(staffed.maker, "viewer"))
    for method, path, query, role in _calls(staffed.app, staffed.order_id):
        response = client.request(
            method, path, params=query, headers=headers, follow_redirects=False
        )
        if method in UNSAFE or (role or Role.VIEWER) > Role.VIEWER:
            assert response.status_code == 403, (method, path, response.status_code)
        else:
            assert response.status_code not in (401, 403), (method, path, response.status_code)
            assert response.status_code < 500, (method, path, response.text)


def test_an_operator_acts_on_every_action_route_and_an_admin_on_admin_routes(
    staffed: Staffed,
) -> None:
    client = TestClient(staffed.app, base_url=BASE, raise_server_exceptions=False)
    operator = bearer(staff_token(staffed.maker, "operator"))
    admin = bearer(staff_token(staffed.maker, "admin"))
    for method, path, query, role in _calls(staffed.app, staffed.order_id):
        for headers, allowed in ((operator, (role or Role.VIEWER) <= Role.OPERATOR), (admin, True)):
            response = client.request(
                method, path, params=query, headers=headers, follow_redirects=False
            )
            if allowed:
                assert response.status_code not in (401, 403), (method, path, response.text)
                assert response.status_code < 500, (method, path, response.text)
            else:
                assert response.status_code == 403, (method, path, response.status_code)


def test_an_operator_retry_answers_200_and_puts_their_name_on_the_timeline(
    staffed: Staffed,
) -> None:
    name = new_user(staffed.maker, "operator", name="grace")
    client = TestClient(staffed.app, base_url=BASE)
    csrf = login(client, name)

    response = client.post(f"/api/orders/{staffed.order_id}/retry", headers={"X-CSRF-Token": csrf})

    assert response.status_code == 200, response.text
    assert response.json() == {"id": staffed.order_id, "resumed_from": "paid", "step": None}
    with staffed.maker() as session:
        events = session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == staffed.order_id)
        ).all()
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "order.retry")).all()
    retry = [e for e in events if e.from_state == "needs_attention"]
    assert [(e.actor, e.to_state) for e in retry] == [("grace", "paid")]
    assert [(a.actor, a.order_id) for a in audit] == [("grace", staffed.order_id)]
    page = client.get(f"/orders/{staffed.order_id}")
    assert "grace" in page.text and 'id="who"' in page.text


def test_a_logged_in_browser_post_without_the_csrf_token_or_from_another_site_is_refused(
    staffed: Staffed,
) -> None:
    client = TestClient(staffed.app, base_url=BASE)
    csrf = login(client, new_user(staffed.maker, "admin"))
    retry = f"/api/orders/{staffed.order_id}/retry"

    forged = client.post(retry)  # the cookie goes along; a forged form knows no token
    wrong = client.post(retry, headers={"X-CSRF-Token": csrf[:-2] + "xx"})
    cross_site = client.post(
        retry, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    )
    form_without = client.post("/logout", data={"csrf_token": ""}, follow_redirects=False)

    for response in (forged, wrong, cross_site, form_without):
        assert response.status_code == 403, response.text
    assert staffed.shop.get(staffed.order_id).state == OrderState.NEEDS_ATTENTION
    # the same post with the token (as the dashboard's script sends it) goes through
    assert client.post(retry, headers={"X-CSRF-Token": csrf}).status_code == 200
    # and a plain form post carries it as a field
    out = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"


def test_a_viewer_sees_no_action_buttons_an_operator_does(staffed: Staffed) -> None:
    client = TestClient(staffed.app, base_url=BASE)
    page = f"/orders/{staffed.order_id}"
    viewer = client.get(page, headers=bearer(staff_token(staffed.maker, "viewer")))
    operator = client.get(page, headers=bearer(staff_token(staffed.maker, "operator")))
    assert viewer.status_code == operator.status_code == 200
    assert f'action="/api/orders/{staffed.order_id}/retry"' not in viewer.text
    assert f'action="/api/orders/{staffed.order_id}/retry"' in operator.text


def test_ship_some_lines_from_the_page_and_the_api_once_per_request(staffed: Staffed) -> None:
    from db.models import Label, Shipment, ShipmentLine

    client = TestClient(staffed.app, base_url=BASE)
    order_id = staffed.shop.order(OrderState.READY_TO_SHIP, lines={"SKU-A": 3, "SKU-B": 1})
    with staffed.maker() as session, session.begin():
        shipment = Shipment(order_id=order_id, carrier="ups", status="labelled",
                            tracking_number="1ZPAGE")  # fmt: skip
        shipment.lines = [ShipmentLine(line_external_id="0", quantity=3),
                          ShipmentLine(line_external_id="1", quantity=1)]  # fmt: skip
        session.add(shipment)
        session.flush()
        session.add(Label(shipment_id=shipment.id, carrier="ups", tracking_number="1ZPAGE",
                          external_id="se-1", idempotency_key=f"label:{order_id}",
                          pdf=b"%PDF-"))  # fmt: skip
    operator = bearer(staff_token(staffed.maker, "operator"))
    page = client.get(f"/orders/{order_id}", headers=operator).text
    assert 'class="action ship-lines"' in page and 'name="line:0"' in page
    assert 'max="3"' in page and 'name="idempotency_key"' in page
    viewer = client.get(f"/orders/{order_id}", headers=bearer(staff_token(staffed.maker, "viewer")))
    assert "ship-lines" not in viewer.text

    url = f"/api/orders/{order_id}/ship"
    both = client.post(url, json={"shipments": [1], "lines": {"0": 1}}, headers=operator)
    too_many = client.post(url, json={"lines": {"SKU-A": 4}}, headers=operator)
    key = {**operator, "Idempotency-Key": "form-abc"}
    first = client.post(url, json={"lines": {"SKU-A": 2}}, headers=key)
    again = client.post(url, json={"lines": {"SKU-A": 2}}, headers=key)

    assert (both.status_code, too_many.status_code) == (422, 409)
    assert "more units than wait to ship" in too_many.json()["detail"]
    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.json()["new"], again.json()["new"]) == (True, False)
    assert first.json()["shipments"] == again.json()["shipments"]
    with staffed.maker() as session:
        rows = session.scalars(select(Shipment).where(Shipment.order_id == order_id)).all()
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "ship")).all()
        asked = session.scalars(select(OrderEvent).where(
            OrderEvent.order_id == order_id, OrderEvent.kind == "ship_lines_requested")).all()
    assert sorted(r.status for r in rows) == ["pending", "pending", "voided"]
    assert [a.actor for a in audit] == [asked[0].actor] and len(asked) == 1
    assert asked[0].actor.endswith("(token tests)") and asked[0].detail["lines"] == {"0": 2}
    # the page now offers only what nobody asked for yet
    assert 'max="1"' in client.get(f"/orders/{order_id}", headers=operator).text


def test_a_revoked_token_and_a_disabled_users_token_are_refused(staffed: Staffed) -> None:
    client = TestClient(staffed.app, base_url=BASE)
    token = staff_token(staffed.maker, "operator")
    assert client.get("/api/summary", headers=bearer(token)).status_code == 200
    with staffed.maker() as session, session.begin():
        row = session.scalars(select(ApiToken)).one()
        revoke_token(session, row.id, actor="admin")

    assert client.get("/api/summary", headers=bearer(token)).status_code == 401
    assert client.get("/api/summary", headers=bearer("os_nope_nothing")).status_code == 401
    assert client.get("/api/summary", headers=bearer(token + "x")).status_code == 401


def test_a_tokens_use_is_one_audit_row_per_token_per_minute_naming_it_and_its_user(
    staffed: Staffed,
) -> None:
    import datetime as dt
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import update

    client = TestClient(staffed.app, base_url=BASE)
    name = new_user(staffed.maker, "operator", name="lin")
    with staffed.maker() as session, session.begin():
        made, token = create_token(session, name, "nightly-export", None, actor="admin")
        session.flush()
        token_id = made.id

    def used() -> list[AuditEntry]:
        with staffed.maker() as session:
            return list(session.scalars(
                select(AuditEntry).where(AuditEntry.action == "token.used")
                .order_by(AuditEntry.id)))  # fmt: skip

    # ten requests at once, within the minute: one row, for the first of them
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: client.get("/api/orders", headers=bearer(token))
                              .status_code, range(10)))  # fmt: skip
    assert codes == [200] * 10
    (row,) = used()
    assert (row.actor, row.target) == ("lin (token nightly-export)", "lin/nightly-export")
    assert row.detail == {"token_id": token_id, "token": "nightly-export", "user": "lin",
                          "request": "GET /api/orders"}  # fmt: skip

    # a minute later (its last use moved back): the next request is a row of its own
    with staffed.maker() as session, session.begin():
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(
            last_used_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=61)))  # fmt: skip
    client.post(f"/api/orders/{staffed.order_id}/retry", headers=bearer(token))
    assert [r.detail["request"] for r in used()] == [
        "GET /api/orders", f"POST /api/orders/{staffed.order_id}/retry"]  # fmt: skip

    # a logged-in browser, a wrong or revoked token: no token use recorded
    login(client, name)
    client.get("/api/orders")
    client.get("/api/orders", headers=bearer(token + "x"))
    with staffed.maker() as session, session.begin():
        revoke_token(session, token_id, actor="admin")
        session.execute(update(ApiToken).where(ApiToken.id == token_id).values(
            last_used_at=None))  # fmt: skip
    assert client.get("/api/orders", headers=bearer(token)).status_code == 401
    assert len(used()) == 2


def test_the_session_cookie_is_http_only_same_site_lax_and_secure_behind_tls(
    staffed: Staffed,
) -> None:
    name = new_user(staffed.maker, "viewer")
    for base, secure in ((BASE, False), ("https://ordersync.local", True)):
        client = TestClient(staffed.app, base_url=base)
        page = client.get("/login")
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert nonce
        done = client.post(
            "/login",
            data={"name": name, "password": PASSWORD, "csrf_token": nonce.group(1)},
            follow_redirects=False,
        )
        cookie = next(
            c for c in done.headers.get_list("set-cookie") if c.startswith("ordersync_session=")
        )
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert ("Secure" in cookie) is secure


def test_a_login_redirects_only_to_this_site(staffed: Staffed) -> None:
    name = new_user(staffed.maker, "viewer")
    client = TestClient(staffed.app, base_url=BASE)
    for target, expected in (
        ("/orders?state=on_hold", "/orders?state=on_hold"),
        ("//evil.example/x", "/"),
        ("https://evil.example", "/"),
    ):
        client.cookies.clear()
        page = client.get("/login")
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert nonce
        done = client.post(
            "/login",
            data={"name": name, "password": PASSWORD, "next": target, "csrf_token": nonce.group(1)},
            follow_redirects=False,
        )
        assert done.headers["location"] == expected


def test_failed_logins_lock_the_name_even_with_the_right_password_then(staffed: Staffed) -> None:
    name = new_user(staffed.maker, "operator")
    client = TestClient(staffed.app, base_url=BASE)

    def attempt(password: str) -> int:
        page = client.get("/login")
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert nonce
        response = client.post(
            "/login",
            data={"name": name, "password": password, "csrf_token": nonce.group(1)},
            follow_redirects=False,
        )
        status: int = response.status_code
        return status

    assert [attempt("wrong password") for _ in range(5)] == [401] * 5
    assert attempt(PASSWORD) == 429  # locked: the password is not even checked
    # another user from the same address is not locked by these five
    other = new_user(staffed.maker, "viewer")
    page = client.get("/login")
    nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert nonce
    ok = client.post(
        "/login",
        data={"name": other, "password": PASSWORD, "csrf_token": nonce.group(1)},
        follow_redirects=False,
    )
    assert ok.status_code == 303


def test_a_login_form_posted_from_elsewhere_is_refused(staffed: Staffed) -> None:
    name = new_user(staffed.maker, "admin")
    client = TestClient(staffed.app, base_url=BASE)
    # no nonce cookie (the form was not loaded from this site)
    done = client.post(
        "/login",
        data={"name": name, "password": PASSWORD, "csrf_token": "x"},
        follow_redirects=False,
    )
    assert done.status_code == 403
    assert "ordersync_session" not in done.headers.get("set-cookie", "")


def test_a_login_form_larger_than_a_form_is_refused_without_being_held(staffed: Staffed) -> None:
    client = TestClient(staffed.app, base_url=BASE)
    done = client.post(
        "/login",
        content=b"name=" + b"x" * 100_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 413


def test_the_order_lists_search_refuses_what_the_database_cannot_take_with_422(
    staffed: Staffed,
) -> None:
    client = TestClient(staffed.app, base_url=BASE)
    headers = bearer(staff_token(staffed.maker, "viewer"))

    found = client.get("/orders", params={"q": "Lovelace"}, headers=headers)
    assert found.status_code == 200 and f"/orders/{staffed.order_id}" in found.text

    # a NUL in the search (PostgreSQL's text cannot hold one) and a page whose OFFSET would
    # not fit a BIGINT: refused before the query, never a 500
    for params in ({"q": "Ada\x00"}, {"page": 10**18}):
        refused = client.get("/orders", params=params, headers=headers)
        assert refused.status_code == 422, (params, refused.status_code)


def test_the_other_text_filters_refuse_a_nul_with_422_not_a_500(staffed: Staffed) -> None:
    # found by the API's schema test on PostgreSQL: a NUL in a filter reached the query
    client = TestClient(staffed.app, base_url=BASE)
    headers = bearer(staff_token(staffed.maker, "viewer"))
    for path, params in (("/api/orders", {"channel": "shopify"}), ("/stock", {"sku": "SKU-1"})):
        assert client.get(path, params=params, headers=headers).status_code == 200, path
    for path, params in (("/api/orders", {"channel": "shop\x00ify"}),
                         ("/stock", {"sku": "SKU\x001"})):  # fmt: skip
        refused = client.get(path, params=params, headers=headers)
        assert refused.status_code == 422, (path, refused.status_code)
