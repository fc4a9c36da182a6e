"""Writing a batch's rows many at a time: PostgreSQL's COPY, or an INSERT elsewhere.

A million-row batch spends most of an executemany INSERT binding parameters row by row;
COPY's text format takes the rows as one stream of tab-separated lines instead. The
rows are the same dicts either way, and a column a dict leaves out gets its Python
default exactly as an INSERT of ``insert(table)`` would give it (a scalar one: a callable
default must be given by the caller, the test of the two paths holds them equal).
The demo's SQLite has no COPY and gets the INSERT.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any

from sqlalchemy import JSON, Boolean, Column, Integer, Table, Uuid, insert
from sqlalchemy.orm import Session

from relightq.credits.amounts import CreditAmount, exact
from relightq.db import UTCDateTime

NULL = "\\N"
# COPY's text format: backslash starts an escape; tab, newline and CR end a cell or row.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

Encoder = Callable[[Any], str]


def copy_text(value: str) -> str:
    """``value`` as a cell of COPY's text format."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_ESCAPES)
    return value


def _json(value: Any) -> str:
    # The engine's own serializer (SQLAlchemy's default: json.dumps).
    return copy_text(json.dumps(value))


class _Cells:
    """The cells of one column in one chunk. A value that is the very object of the row
    before (the batch's id, the shared timestamp, one parameters dict for many rows) is
    not encoded again; rows are never changed while they are written."""

    def __init__(self, encode: Encoder) -> None:
        self.encode = encode
        self.last: Any = None
        self.text = NULL

    def __call__(self, value: Any) -> str:
        if value is not self.last:
            self.text = NULL if value is None else self.encode(value)
            self.last = value
        return self.text


def _timestamp(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime; use relightq.db.utcnow()")
    return value.astimezone(UTC).isoformat()


def _amount(value: Decimal | int | str) -> str:
    return str(exact(value))


def _boolean(value: bool) -> str:
    return "t" if value else "f"


def _integer(value: int) -> str:
    return str(int(value))


def _text(value: Any) -> str:
    return copy_text(str(value))


def _encoder(column: Column[Any]) -> Encoder:
    """How a value of ``column`` (not None) is written into COPY text."""
    kind = column.type
    if isinstance(kind, JSON):
        return _json
    if isinstance(kind, UTCDateTime):
        return _timestamp
    if isinstance(kind, CreditAmount):
        return _amount
    if isinstance(kind, Boolean):
        return _boolean
    if isinstance(kind, Uuid):
        return str
    if isinstance(kind, Integer):
        return _integer
    return _text  # String, Text and StrEnum values stored as text


class RowWriter:
    """Writes dicts of one shape (``keys``) into ``table``, a chunk at a time.

    ``constants`` are values every row has (a batch's id, its creation time): written
    once into each line's tail instead of being looked up and encoded row by row.
    """

    def __init__(
        self, table: Table, keys: Sequence[str], constants: dict[str, Any] | None = None
    ) -> None:
        self.table = table
        self.keys = tuple(keys)
        self.constants = dict(constants or {})
        unknown = {*self.keys, *self.constants} - set(table.columns.keys())
        if unknown:
            raise ValueError(f"{table.name} has no columns {sorted(unknown)}")
        # Columns the dicts leave out but an INSERT would fill from a Python default.
        self.defaults: dict[str, Any] = {}
        for column in table.columns:
            if column.key in self.keys or column.key in self.constants or column.default is None:
                continue
            default = column.default
            if not default.is_scalar:
                raise ValueError(f"{table.name}.{column.key} has a callable default; give it")
            self.defaults[column.key] = default.arg  # type: ignore[attr-defined]
        self.columns = [table.columns[key] for key in self.keys]
        fixed = {**self.constants, **self.defaults}
        fixed_columns = [table.columns[key] for key in fixed]
        names = ", ".join(f'"{column.name}"' for column in (*self.columns, *fixed_columns))
        self.statement = f'COPY "{table.name}" ({names}) FROM STDIN'
        # The constants' and defaults' cells, the same on every line.
        self._tail = "".join(
            "\t" + (NULL if value is None else _encoder(column)(value))
            for value, column in zip(fixed.values(), fixed_columns, strict=True)
        )

    def bound(self, constants: dict[str, Any]) -> RowWriter:
        """This writer for rows that all share ``constants`` (left out of their dicts)."""
        keys = [key for key in self.keys if key not in constants]
        return RowWriter(self.table, keys, {**self.constants, **constants})

    def text(self, rows: list[dict[str, Any]]) -> str:
        """``rows`` as lines of COPY text."""
        # New cells for each chunk: a writer is shared by threads.
        cells = [_Cells(_encoder(column)) for column in self.columns]
        keys, tail = self.keys, self._tail + "\n"
        return "".join(
            "\t".join([cell(row[key]) for key, cell in zip(keys, cells, strict=True)]) + tail
            for row in rows
        )

    def whole(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` with the constants put back: what an INSERT is given."""
        if not self.constants:
            return rows
        return [{**self.constants, **row} for row in rows]


def copies(session: Session) -> bool:
    """True when rows are written with COPY (PostgreSQL), False for an INSERT."""
    return session.get_bind().dialect.name == "postgresql"


class CopyStream:
    """Rows written into a session's transaction, a chunk at a time, with one COPY kept
    open across chunks (while the next ones are validated the server stores the last:
    the two cores work at once). Only one COPY can be open on a connection, so a chunk
    for another table ends it, and nothing else may use the session until the stream is
    closed. Leaving it with an exception abandons the COPY, so the transaction fails."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.uses_copy = copies(session)
        self._writer: RowWriter | None = None
        self._open = ExitStack()
        self._copy: Any = None

    def write(self, writer: RowWriter, rows: list[dict[str, Any]]) -> None:
        """Store ``rows`` (dicts shaped as ``writer`` expects)."""
        if not rows:
            return
        if not self.uses_copy:
            self.session.execute(insert(writer.table), writer.whole(rows))
            return
        if writer is not self._writer:
            self.close()
            raw: Any = self.session.connection().connection.driver_connection
            cursor = self._open.enter_context(raw.cursor())
            self._copy = self._open.enter_context(cursor.copy(writer.statement))
            self._writer = writer
        self._copy.write(writer.text(rows))

    def close(self) -> None:
        """End the open COPY, if any: its rows are stored (pending the commit)."""
        self._open.close()
        self._writer = self._copy = None

    def __enter__(self) -> CopyStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._open.__exit__(kind, error, trace)  # the COPY fails; so does the transaction
            self._writer = self._copy = None
