"""JSON text from clients (bodies, form fields, file rows): one answer when it is not JSON
or nests too deeply.

Python's parser gives up with a RecursionError near 1000 levels, and values nested a few
hundred deep pass the parser but break what comes after it (pydantic will not serialize
them back, the NUL check walks recursively), each a 500 in its own place. A nesting
limit checked once, where the text is parsed, keeps every later step safe.
"""

from __future__ import annotations

import json
from typing import Any

from relightq.errors import FieldProblem, InvalidInput

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


def parse_json(data: str | bytes | bytearray, field: str, allowed: str | None = None) -> Any:
    """``data`` parsed; InvalidInput naming ``field`` when it is not JSON or nests too deeply."""
    try:
        value = json.loads(data)
    except RecursionError as exc:
        raise InvalidInput([FieldProblem(field, TOO_DEEP, allowed)]) from exc
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidInput([FieldProblem(field, NOT_JSON, allowed)]) from exc
    if nesting_depth(value) > MAX_DEPTH:
        raise InvalidInput([FieldProblem(field, TOO_DEEP, allowed)])
    return value
