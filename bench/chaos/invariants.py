"""The chaos suite's invariants: each a pure function of a ``Facts`` snapshot (taken after the
system went quiet, from our database, the sandbox's ledgers and Redis) returning the ids that
break it (empty = holds). Pure so that a unit test can hand them a deliberately broken state.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from domain.states import OrderState, can_transition

__all__ = ["FINAL_STATES", "INVARIANTS", "Facts", "check_all"]

#: where every order of a run must end once the system is quiet (on_hold: waiting for stock
#: that never came is an end too, shown to staff)
FINAL_STATES = frozenset({"cancelled", "delivered", "needs_attention", "on_hold"})
#: inbox statuses that mean "handled" (stale deliveries are ignored on purpose)
HANDLED = frozenset({"processed", "ignored"})
LEFT = frozenset({"shipped", "delivered", "exception"})


@dataclass
class Facts:
    """What the invariants read; every id is a string so the table can print it."""

    #: (channel, external id) of every order the sandbox marketplaces created in the run
    sandbox_orders: set[tuple[str, str]] = field(default_factory=set)
    #: our orders of the run: id → (channel, external id, state)
    orders: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    #: our order timeline: (order id, from state, to state), in the order written
    transitions: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    #: our payments: order id → (amount, collected by the marketplace)
    payments: dict[int, tuple[Decimal, bool]] = field(default_factory=dict)
    #: captures as the outside world counts them (the payment provider's PaymentIntents,
    #: Shopify's orderCapture): (capture id, (channel, external order id), amount)
    captures: list[tuple[str, tuple[str, str], Decimal]] = field(default_factory=list)
    #: orders whose money does not add up (``orders.money_check``): "order N: why"
    money_mismatches: list[str] = field(default_factory=list)
    #: invoice numbers per series, and each series' counter (the next number to issue)
    invoice_numbers: dict[str, list[int]] = field(default_factory=dict)
    invoice_counters: dict[str, int] = field(default_factory=dict)
    #: our shipments: id → (order id, status, tracking number)
    shipments: dict[int, tuple[int, str, str | None]] = field(default_factory=dict)
    #: our labels: (shipment id, tracking number, voided)
    labels: list[tuple[int, str, bool]] = field(default_factory=list)
    #: the carrier's labels: (label id, external shipment id, tracking number, voided)
    carrier_labels: list[tuple[str, str | None, str, bool]] = field(default_factory=list)
    #: fulfilments in the marketplaces' ledgers per (channel, external order id)
    fulfilments: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: stock: sku → (on hand, reserved)
    stock: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: each merchant-fulfilled listing: (channel, sku) → (what the marketplace shows, the
    #: buffered available quantity it should show)
    channel_stock: dict[tuple[str, str], tuple[int | None, int]] = field(default_factory=dict)
    #: webhooks the run sent and our web app answered 2xx: (account id, dedupe key)
    acknowledged: set[tuple[int, str]] = field(default_factory=set)
    #: inbox rows: (account id, dedupe key) → (status, attempts)
    inbox: dict[tuple[int, str], tuple[str, int]] = field(default_factory=dict)
    #: deliveries sent on purpose as poison (unreadable): (account id, dedupe key)
    poison: set[tuple[int, str]] = field(default_factory=set)
    attempt_bound: int = 8
    #: queue items that are not messages: how many the run pushed, how many were set aside
    unreadable_pushed: int = 0
    dead_letters: int = 0
    #: leftovers: Redis lock keys, unacked or queued messages, unfinished idempotency keys,
    #: undelivered outbox rows (ids)
    lock_keys: list[str] = field(default_factory=list)
    queued: dict[str, int] = field(default_factory=dict)
    unfinished_keys: list[str] = field(default_factory=list)
    undelivered_outbox: list[int] = field(default_factory=list)


Check = Callable[[Facts], list[str]]


def one_order_per_external_order(f: Facts) -> list[str]:
    """Every sandbox order became exactly one of ours (none lost, none twice)."""
    ours = Counter((channel, ext) for channel, ext, _ in f.orders.values())
    bad = [f"{c}:{e} x{ours[(c, e)]}" for c, e in sorted(f.sandbox_orders) if ours[(c, e)] != 1]
    bad += [
        f"{c}:{e} x{n}"
        for (c, e), n in sorted(ours.items())
        if n > 1 and (c, e) not in f.sandbox_orders
    ]
    return bad


def orders_final(f: Facts) -> list[str]:
    """Every order of the run ended final (delivered, cancelled) or with staff."""
    return [
        f"order {oid} {state}"
        for oid, (_, _, state) in sorted(f.orders.items())
        if state not in FINAL_STATES
    ]


def one_capture_per_payment(f: Facts) -> list[str]:
    """At most one capture per order (one authorization each), exactly one per payment we
    recorded as captured by us, the amounts equal; none we do not know of."""
    by_order: dict[tuple[str, str], list[tuple[str, Decimal]]] = defaultdict(list)
    for capture_id, order_key, captured in f.captures:
        by_order[order_key].append((capture_id, captured))
    bad = [
        f"{c}:{e}: {len(got)} captures" for (c, e), got in sorted(by_order.items()) if len(got) > 1
    ]
    ours = set()
    for order_id, (amount, by_marketplace) in sorted(f.payments.items()):
        if by_marketplace or order_id not in f.orders:
            continue
        channel, ext, _ = f.orders[order_id]
        ours.add((channel, ext))
        got = by_order.get((channel, ext), [])
        if not got:
            bad.append(f"order {order_id}: paid, no capture")
        elif len(got) == 1 and got[0][1] != amount:
            bad.append(f"order {order_id}: captured {got[0][1]} != {amount}")
    bad += [
        f"capture {got[0][0]} of {c}:{e}: no payment of ours"
        for (c, e), got in sorted(by_order.items())
        if (c, e) not in ours
    ]
    return bad


def money_balances(f: Facts) -> list[str]:
    """invoiced - credited = captured - refunded = what the marketplace says the buyer paid,
    per order whose money is settled (``orders.money_check``, the product's own definition,
    read into ``money_mismatches``)."""
    return list(f.money_mismatches)


def invoice_numbers_contiguous(f: Facts) -> list[str]:
    """Invoice and credit-note numbers 1..n per series, none twice, none missing."""
    bad = []
    for series, numbers in sorted(f.invoice_numbers.items()):
        top = max(f.invoice_counters.get(series, 1) - 1, max(numbers, default=0))
        seen = Counter(numbers)
        bad += [f"{series}-{n} missing" for n in range(1, top + 1) if not seen[n]]
        bad += [f"{series}-{n} x{k}" for n, k in sorted(seen.items()) if k > 1]
    return bad


def one_label_per_shipment(f: Facts) -> list[str]:
    """At most one live carrier label per shipment; ours is that one; a voided label is not
    used again (no shipment ships under it)."""
    live: dict[str | None, list[str]] = defaultdict(list)
    voided = set()
    carrier_tracking = {}
    for label_id, ref, tracking, is_void in f.carrier_labels:
        carrier_tracking[tracking] = is_void
        if is_void:
            voided.add(tracking)
        else:
            live[ref].append(label_id)
    bad = [
        f"shipment {ref}: {len(ids)} live labels"
        for ref, ids in sorted(live.items(), key=lambda kv: str(kv[0]))
        if len(ids) > 1
    ]
    for shipment_id, tracking, is_void in f.labels:
        if tracking not in carrier_tracking:
            bad.append(f"shipment {shipment_id}: label {tracking} unknown to the carrier")
        elif carrier_tracking[tracking] and not is_void:
            bad.append(f"shipment {shipment_id}: label {tracking} voided at the carrier")
    for shipment_id, (_, status, shipped_under) in sorted(f.shipments.items()):
        if status in LEFT and shipped_under in voided:
            bad.append(f"shipment {shipment_id}: shipped under voided label {shipped_under}")
    return bad


def one_fulfilment_per_shipment(f: Facts) -> list[str]:
    """The marketplace's ledger holds one fulfilment per shipment of ours that left."""
    left: Counter[tuple[str, str]] = Counter()
    for order_id, status, _ in f.shipments.values():
        if status in LEFT and order_id in f.orders:
            channel, ext, _ = f.orders[order_id]
            left[(channel, ext)] += 1
    keys = sorted(set(left) | set(f.fulfilments))
    return [
        f"{c}:{e} {f.fulfilments[(c, e)]} fulfilments for {left[(c, e)]} shipments"
        for c, e in keys
        if f.fulfilments[(c, e)] != left[(c, e)]
    ]


def no_negative_stock(f: Facts) -> list[str]:
    return [
        f"{sku}: on hand {on_hand}, reserved {reserved}"
        for sku, (on_hand, reserved) in sorted(f.stock.items())
        if on_hand < 0 or reserved < 0 or reserved > on_hand
    ]


def channel_stock_matches(f: Facts) -> list[str]:
    """Every channel shows the buffered available quantity of each listing."""
    return [
        f"{channel}/{sku}: shows {shown}, should show {expected}"
        for (channel, sku), (shown, expected) in sorted(f.channel_stock.items())
        if shown != expected
    ]


def acknowledged_webhooks_processed(f: Facts) -> list[str]:
    """Every webhook we answered 2xx has an inbox row, handled (poison excepted)."""
    bad = []
    for key in sorted(f.acknowledged - f.poison):
        row = f.inbox.get(key)
        if row is None:
            bad.append(f"{key[0]}/{key[1]}: no inbox row")
        elif row[0] not in HANDLED:
            bad.append(f"{key[0]}/{key[1]}: {row[0]}")
    return bad


def no_order_moved_backwards(f: Facts) -> list[str]:
    """Every state change on the timeline is one the transition table allows, from the state
    the order was in."""
    bad = []
    current: dict[int, str] = {}
    for order_id, before, after in f.transitions:
        if after is None or before == after:
            continue
        if before is not None and order_id in current and current[order_id] != before:
            bad.append(f"order {order_id}: {before}->{after} but was {current[order_id]}")
        elif before is not None and not can_transition(OrderState(before), OrderState(after)):
            bad.append(f"order {order_id}: {before}->{after}")
        current[order_id] = after
    return bad


def nothing_left_behind(f: Facts) -> list[str]:
    """No lock keys, queued or unacked messages, unfinished idempotency keys or undelivered
    outbox rows once quiet."""
    return (
        [f"lock {k}" for k in f.lock_keys]
        + [f"{queue}: {n} messages" for queue, n in sorted(f.queued.items()) if n]
        + [f"idempotency key {k}" for k in f.unfinished_keys]
        + [f"outbox {i}" for i in f.undelivered_outbox]
    )


def poison_dead_lettered(f: Facts) -> list[str]:
    """Poison deliveries ended failed (shown to staff) within their attempt bound."""
    bad = []
    for key in sorted(f.poison & f.acknowledged):
        row = f.inbox.get(key)
        if row is None:
            bad.append(f"{key[0]}/{key[1]}: no inbox row")
        elif row[0] != "failed" or row[1] > f.attempt_bound + 1:
            bad.append(f"{key[0]}/{key[1]}: {row[0]} after {row[1]} attempts")
    if f.dead_letters < f.unreadable_pushed:
        bad.append(f"{f.unreadable_pushed} unreadable queue items, {f.dead_letters} set aside")
    return bad


INVARIANTS: dict[str, Check] = {
    "one order per external order": one_order_per_external_order,
    "orders final": orders_final,
    "one capture per payment": one_capture_per_payment,
    "invoiced - credited = captured - refunded": money_balances,
    "invoice numbers contiguous": invoice_numbers_contiguous,
    "one label per shipment": one_label_per_shipment,
    "one fulfilment per shipment": one_fulfilment_per_shipment,
    "no negative stock": no_negative_stock,
    "channel stock = buffered available": channel_stock_matches,
    "2xx webhooks processed": acknowledged_webhooks_processed,
    "no order moved backwards": no_order_moved_backwards,
    "nothing left behind": nothing_left_behind,
    "poison dead-lettered": poison_dead_lettered,
}


def check_all(facts: Facts) -> dict[str, list[str]]:
    """Invariant name → the ids that break it."""
    return {name: check(facts) for name, check in INVARIANTS.items()}
