"""The pure domain: order states, the canonical order, the parcel, money, the error tree.

No database, no HTTP, no framework: everything above builds on these words."""
