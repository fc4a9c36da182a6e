"""JSON text from clients (bodies, form fields, file rows): one answer when it is not JSON,
nests too deeply, or holds text that cannot be stored.

Python's parser gives up with a RecursionError near 1000 levels, and values nested a few
hundred deep pass the parser but break what comes after it (pydantic will not serialize
them back, the NUL check walks recursively), each a 500 in its own place. A nesting
limit checked once, where the text is parsed, keeps every later step safe.

So does the text check: JSON may spell NUL (``\\u0000``), which PostgreSQL cannot store,
and unpaired UTF-16 surrogates (``\\udfff``), which are not Unicode text and fail as a
UnicodeEncodeError wherever the value is next encoded (a validator's message, a digest,
an INSERT). Both are refused here, naming the field, so no later step meets them.
"""

from __future__ import annotations

import json
from typing import Any

from relightq.errors import FieldProblem, InvalidInput, storable, unstorable_field

# Deeper than any job field or metadata needs; far below where the steps after parsing fail.
MAX_DEPTH = 64
TOO_DEEP = f"nests too deeply (at most {MAX_DEPTH} levels of arrays and objects)"
NOT_JSON = "is not valid JSON"
CONTAINERS = (dict, list)


def nesting_depth(value: Any) -> int:
    """Levels of arrays and objects in ``value`` (a scalar is 0), counted a level at a
    time without recursion (and stopping past MAX_DEPTH: that is deep enough to refuse)."""
    level = [value] if isinstance(value, CONTAINERS) else []
    depth = 0
    while level and depth <= MAX_DEPTH:
        depth += 1
        below: list[Any] = []
        for item in level:
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, CONTAINERS):
                    below.append(child)
        level = below
    return depth


def parse_json(
    data: str | bytes | bytearray,
    field: str,
    allowed: str | None = None,
    *,
    document: bool = False,
    clean: bool = False,
) -> Any:
    """``data`` parsed; InvalidInput naming ``field`` when it is not JSON or nests too
    deeply, or naming the key or string that holds NUL or a lone surrogate.

    ``document``: ``data`` is a whole body or item, so a string inside it is named from
    its top (``metadata.sku``), not below ``field`` (``body.metadata.sku``).
    ``clean``: such text is made storable (see ``storable``) instead of refused, for a
    third party's payload that the tenant cannot fix.
    """
    try:
        value = json.loads(data)
    except RecursionError as exc:
        raise InvalidInput([FieldProblem(field, TOO_DEEP, allowed)]) from exc
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidInput([FieldProblem(field, NOT_JSON, allowed)]) from exc
    if nesting_depth(value) > MAX_DEPTH:
        raise InvalidInput([FieldProblem(field, TOO_DEEP, allowed)])
    if clean:
        return storable(value)
    problem = unstorable_field(value, "" if document else field, whole=field)
    if problem is not None:
        raise InvalidInput([problem])
    return value
