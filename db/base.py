"""Declarative base, naming convention and the column types every table shares.

- Constraint names come from one naming convention so migrations are stable across databases.
- ``UTCDateTime`` stores UTC and always hands back an aware ``datetime`` (SQLite keeps no zone).
- ``Money`` is ``Numeric(18, 4)`` returning ``Decimal``; it always travels with a currency column.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import DateTime, Dialect, MetaData, Numeric, String, Table, TypeDecorator, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "Currency",
    "ExternalId",
    "Money",
    "UTCDateTime",
    "created_at",
    "updated_at",
    "utcnow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware timestamps on every database: naive values are refused on the way in."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: pass an aware datetime (UTC)")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        stamp: dt.datetime = (
            dt.datetime.fromisoformat(value) if isinstance(value, str) else value
        )  # a str only from raw SQL on SQLite
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=dt.UTC)
        return stamp.astimezone(dt.UTC)


class Money(TypeDecorator[Decimal]):
    """A money amount. Never float in Python; ``Numeric`` in the database."""

    impl = Numeric(18, 4, asdecimal=True)
    cache_ok = True

    def process_bind_param(self, value: Decimal | int | str | None, dialect: Dialect) -> Any:
        if value is None or type(value) is Decimal:  # immutable: the same value, no copy
            return value
        if isinstance(value, float):
            raise TypeError("money must be Decimal, int or str, never float")
        return Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        # SQLite hands back a float-backed value; 4 places is the column's scale.
        return Decimal(value).quantize(Decimal("0.0001"))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dt.datetime: UTCDateTime(),
        Decimal: Money(),
    }


#: External ids are strings: Shopify's exceed 2^53, Amazon's have leading zeros.
ExternalId = String(64)
Currency = String(3)


def table(model: type[Base]) -> Table:
    """A model's ``Table``, for Core statements (``__table__`` is typed as any FromClause)."""
    return cast(Table, model.__table__)


def created_at() -> Mapped[dt.datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, server_default=func.current_timestamp())


def updated_at() -> Mapped[dt.datetime]:
    return mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, server_default=func.current_timestamp()
    )
