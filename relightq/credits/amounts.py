"""Credits as exact decimals: stored as NUMERIC, answered as JSON numbers with exact text.

Floats cannot hold 0.037 exactly, so sums drift (a batch once answered
``0.33299999999999996``) and a budget of 0.37 admitted only 9 calls of 0.037 (10 × 0.037
is 0.37000000000000005 in binary). Every amount is a :class:`~decimal.Decimal` with six
places, in PostgreSQL as ``NUMERIC(18, 6)``. In JSON an amount is a number whose text is
exact (``0.333``): six places and at most twelve integer digits fit the 15 significant
digits a double round-trips, so ``float`` writes the same digits back.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field, PlainSerializer
from sqlalchemy import Float, Numeric
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

PLACES = 6
QUANTUM = Decimal(1).scaleb(-PLACES)
ZERO = Decimal(0)


def exact(value: Decimal | float | int | str) -> Decimal:
    """An amount as a decimal of six places (a float is read by its shortest text)."""
    if isinstance(value, float):
        value = repr(value)
    return Decimal(value).quantize(QUANTUM)


def as_text(value: Decimal) -> str:
    """An amount without trailing zeros and never in exponent form: ``0.037``, ``12``."""
    text = f"{value.quantize(QUANTUM):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _json_number(value: Decimal) -> float:
    return float(value)


def json_default(value: object) -> float:
    """``json.dumps``'s ``default`` for amounts: a Decimal as a number with exact text."""
    if isinstance(value, Decimal):
        return _json_number(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# An amount in API answers: a JSON number with exact text (see the module docstring).
Credits = Annotated[Decimal, PlainSerializer(_json_number, return_type=float, when_used="json")]
# An amount a client sends: positive, finite, at most six decimal places.
PositiveCredits = Annotated[
    Decimal,
    Field(gt=0, max_digits=18, decimal_places=PLACES, allow_inf_nan=False),
    PlainSerializer(_json_number, return_type=float, when_used="json"),
]


class CreditAmount(TypeDecorator[Decimal]):
    """NUMERIC(18, 6) on PostgreSQL; the demo's SQLite has no decimal type and stores a
    float, read back to six places."""

    impl = Numeric(18, PLACES)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Float())
        return dialect.type_descriptor(Numeric(18, PLACES, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = exact(value)
        return float(amount) if dialect.name == "sqlite" else amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else exact(value)
