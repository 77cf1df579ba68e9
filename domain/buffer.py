"""Buffer rules: how much of our available stock one channel listing is told it may sell.

A merchant keeps stock back from a channel so that the lag between a sale elsewhere and the
next push cannot oversell it: keep back a percentage (the pushed quantity is rounded down), cap
what one channel sees, and push zero once available falls to a threshold. Each listing may set
its own rule; what it leaves unset comes from its account's default (``BufferRule.over``).

Pure functions, property-tested (``tests/unit/test_buffer_rules.py``): the pushed quantity is
never above available, never negative, and never falls when available rises.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BufferRule", "pushed_quantity"]


@dataclass(frozen=True)
class BufferRule:
    #: percent of available kept back (0-100); the pushed quantity is rounded down
    keep_percent: int = 0
    #: the most one channel is shown; None = no cap
    max_quantity: int | None = None
    #: push 0 when available is at or below this
    zero_at_or_below: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.keep_percent <= 100:
            raise ValueError(f"keep_percent must be 0-100, not {self.keep_percent}")
        if self.max_quantity is not None and self.max_quantity < 0:
            raise ValueError(f"max_quantity cannot be negative ({self.max_quantity})")
        if self.zero_at_or_below < 0:
            raise ValueError(f"zero_at_or_below cannot be negative ({self.zero_at_or_below})")

    @staticmethod
    def over(
        default: BufferRule,
        *,
        keep_percent: int | None = None,
        max_quantity: int | None = None,
        zero_at_or_below: int | None = None,
    ) -> BufferRule:
        """A listing's own settings over its account's default (None = the default's)."""
        return BufferRule(
            keep_percent=default.keep_percent if keep_percent is None else keep_percent,
            max_quantity=default.max_quantity if max_quantity is None else max_quantity,
            zero_at_or_below=(
                default.zero_at_or_below if zero_at_or_below is None else zero_at_or_below
            ),
        )


def pushed_quantity(available: int, rule: BufferRule) -> int:
    """What the channel is told it may sell when ``available`` units are free to sell."""
    if available <= rule.zero_at_or_below or available <= 0:
        return 0
    quantity = available * (100 - rule.keep_percent) // 100
    if rule.max_quantity is not None:
        quantity = min(quantity, rule.max_quantity)
    return max(0, quantity)
