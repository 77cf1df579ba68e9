"""A parcel: one package as a carrier prices and labels it (weight and outer dimensions).

Ours, not a carrier's wire shape: the fulfilment step sizes it, a carrier client sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Parcel"]


@dataclass(frozen=True)
class Parcel:
    """One package: weight in grams, outer dimensions in centimetres."""

    weight_grams: int
    length_cm: float
    width_cm: float
    height_cm: float

    def __post_init__(self) -> None:
        if isinstance(self.weight_grams, bool) or self.weight_grams <= 0:
            raise ValueError("parcel weight must be a positive number of grams")
        if min(self.length_cm, self.width_cm, self.height_cm) <= 0:
            raise ValueError("parcel dimensions must be positive")
