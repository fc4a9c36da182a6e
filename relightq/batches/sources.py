"""Where a batch's items come from: inline JSON, a CSV or JSONL file, or an S3 prefix.

Each source is a generator of :class:`RawItem`, read one row at a time, so a file of
100k rows is never whole in memory; validation happens later, the same for every source.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from relightq.batches.schemas import ALLOWED
from relightq.errors import FieldProblem, InvalidInput, is_storable
from relightq.jobs.schemas import JobCreate
from relightq.json_input import parse_json
from relightq.storage import Storage, StoredObject, parse_s3_prefix

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA_COLUMN_PREFIX = "metadata."
KNOWN_COLUMNS = frozenset(JobCreate.model_fields)


@dataclass(frozen=True)
class RawItem:
    """One item as read, not yet validated; ``problem`` is set when it could not be read."""

    row: int
    fields: dict[str, Any]
    source_key: str | None = None
    problem: FieldProblem | None = None
    # The source already found no NUL or lone surrogate in any of its text (so the
    # per-row walk that names such a field can be skipped).
    storable: bool = False


def json_items(items: Iterable[Any]) -> Iterator[RawItem]:
    """Items given inline in a JSON request."""
    for row, item in enumerate(items, start=1):
        if isinstance(item, dict):
            yield RawItem(row, item)
        else:
            yield RawItem(row, {}, problem=_not_an_object())


def _not_an_object() -> FieldProblem:
    return FieldProblem("item", "must be a JSON object", ALLOWED["items"])


def jsonl_items(binary: IO[bytes]) -> Iterator[RawItem]:
    """One JSON object per line; blank lines are skipped and do not count as rows."""
    row = 0
    for line in io.TextIOWrapper(binary, encoding="utf-8-sig", errors="strict"):
        if not line.strip():
            continue
        row += 1
        try:
            item = parse_json(line, "item", document=True)
        except InvalidInput as exc:
            yield RawItem(row, {}, problem=exc.fields[0])
            continue
        if isinstance(item, dict):
            yield RawItem(row, item, storable=True)  # parse_json refuses such text
        else:
            yield RawItem(row, {}, problem=_not_an_object())


def csv_items(binary: IO[bytes]) -> Iterator[RawItem]:
    """A CSV with a header row naming job fields; empty cells take the batch's defaults.

    ``metadata`` holds a JSON object; ``metadata.<key>`` columns add string values.
    """
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="strict", newline="")
    records = _records(csv.reader(text))
    header = next(records, None)
    if isinstance(header, csv.Error):
        raise InvalidInput(
            [FieldProblem("file", f"has a header row that cannot be read ({header})")]
        )
    if not header:
        raise InvalidInput([FieldProblem("file", "is empty; a header row is required")])
    columns = [name.strip() for name in header]
    unknown = [
        name
        for name in columns
        if name not in KNOWN_COLUMNS and not name.startswith(METADATA_COLUMN_PREFIX)
    ]
    problems = []
    if unknown:
        problems.append(
            FieldProblem("columns", f"unknown columns: {', '.join(unknown)}", ALLOWED["columns"])
        )
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:  # which of two "prompt" cells would win is nobody's guess
        problems.append(
            FieldProblem("columns", f"repeated columns: {', '.join(repeated)}", ALLOWED["columns"])
        )
    if "subject_image" not in columns:
        problems.append(
            FieldProblem("columns", "a subject_image column is required", ALLOWED["columns"])
        )
    if problems:
        raise InvalidInput(problems)
    header_storable = is_storable(columns)  # metadata.<key> columns name keys
    for row, cells in enumerate(records, start=1):
        if isinstance(cells, csv.Error):
            yield RawItem(row, {}, problem=FieldProblem("item", f"cannot be read as CSV ({cells})"))
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(columns):
            yield RawItem(row, {}, problem=FieldProblem("item", "has more cells than the header"))
            continue
        # One look at the joined cells: joining makes no NUL or surrogate and hides none.
        storable = header_storable and is_storable("".join(cells))
        yield _csv_item(row, columns, cells, storable)


def _records(reader: Iterator[list[str]]) -> Iterator[list[str] | csv.Error]:
    """Each record, or the csv.Error that made one unreadable (a cell over the csv module's
    128 KiB field limit, say); the reader goes on with the next record after one."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield exc


def _csv_item(row: int, columns: list[str], cells: list[str], storable: bool) -> RawItem:
    fields: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for name, cell in zip(columns, cells, strict=False):
        value = cell.strip()
        if not value:
            continue
        if name.startswith(METADATA_COLUMN_PREFIX):
            metadata[name.removeprefix(METADATA_COLUMN_PREFIX)] = value
        elif name == "metadata":
            try:
                parsed = parse_json(value, "metadata", ALLOWED["metadata"])
            except InvalidInput as exc:
                return RawItem(row, fields, problem=exc.fields[0])
            if not isinstance(parsed, dict):
                problem = FieldProblem("metadata", "is not a JSON object", ALLOWED["metadata"])
                return RawItem(row, fields, problem=problem)
            metadata.update(parsed)
        else:
            fields[name] = value
    if metadata:
        fields["metadata"] = metadata
    return RawItem(row, fields, storable=storable)


def prefix_items(
    storage: Storage, prefix_uri: str, only: Callable[[StoredObject], bool] | None = None
) -> Iterator[RawItem]:
    """Every image below an S3 prefix, recursively, in key order (other files are skipped);
    ``only`` narrows them further (a schedule's new or changed objects)."""
    _, prefix = parse_s3_prefix(prefix_uri)
    row = 0
    for stored in storage.list_objects(prefix_uri):
        if not stored.key.lower().endswith(IMAGE_SUFFIXES) or stored.size == 0:
            continue
        if only is not None and not only(stored):
            continue
        row += 1
        yield RawItem(row, {"subject_image": stored.uri}, source_key=stored.key[len(prefix) :])
