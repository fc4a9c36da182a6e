"""Writes the generated reference pages: configuration from the Settings class, the OpenAPI.

    python -m scripts.gen_reference            # rewrite both files
    python -m scripts.gen_reference --check    # exit 1 if a committed file is stale

docs/reference/configuration.md comes from relightq/settings.py: each field's name, type,
default and allowed values, and the comment above it as its description.
docs/reference/openapi.json is api.app.create_app().openapi(). tests/test_reference_docs.py
fails when either committed file differs from what this script writes.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import sys
import tokenize
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_SOURCE = ROOT / "relightq" / "settings.py"
CONFIGURATION_PAGE = ROOT / "docs" / "reference" / "configuration.md"
OPENAPI_FILE = ROOT / "docs" / "reference" / "openapi.json"
REGENERATE = "python -m scripts.gen_reference"

CONFIGURATION_HEADER = f"""# Configuration

<!-- Generated from relightq/settings.py by `{REGENERATE}`; do not edit by hand. -->

relightq reads its settings from environment variables, or from a `.env` file in the
directory it starts in, every name prefixed `RELIGHTQ_`. Under docker-compose, each
variable set in the host's environment (or in the `.env` beside `docker-compose.yml`)
reaches every relightq service; unset ones keep the defaults below. A value that breaks a
rule below (a bound, a pattern, the ordering of the timeouts) stops relightq at start with
a message naming the variable.

The timeouts must be ordered `SEGMIND_TIMEOUT_SECONDS + SLOT_WAIT_SECONDS <
TASK_TIME_LIMIT_SECONDS < BROKER_VISIBILITY_TIMEOUT_SECONDS`, so the broker never
redelivers a task that is still running, and `SEGMIND_TIMEOUT_SECONDS <
WORKER_SHUTDOWN_GRACE_SECONDS`, so a stopping worker lets its calls finish.
"""


def _comments_by_line(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """Comments keyed by line number: those alone on their line, and those ending a line."""
    alone: dict[int, str] = {}
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            own_line = not token.line[: token.start[1]].strip()
            (alone if own_line else trailing)[token.start[0]] = text
    return alone, trailing


def field_descriptions(source: str) -> dict[str, tuple[str, str]]:
    """Each Settings field's (annotation, description): the comment lines right above it."""
    tree = ast.parse(source)
    alone, trailing = _comments_by_line(source)
    settings = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"
    )
    fields: dict[str, tuple[str, str]] = {}
    for node in settings.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        lines: list[str] = []
        line = node.lineno - 1
        while line in alone:
            lines.insert(0, alone[line])
            line -= 1
        if node.lineno in trailing:  # a comment at the end of the field's own line
            lines.append(trailing[node.lineno])
        fields[node.target.id] = (ast.unparse(node.annotation), " ".join(lines))
    return fields


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 1024 * 1024 and value % (1024 * 1024) == 0:
        return f"`{value}` ({value // (1024 * 1024)} MiB)"
    if isinstance(value, str):
        return f'`"{value}"`' if value else "empty"
    if isinstance(value, list):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _allowed(metadata: list[Any]) -> str:
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "at least"}
    rules: list[str] = []
    for item in metadata:
        for attribute, word in words.items():
            bound = getattr(item, attribute, None)
            if bound is not None:
                rules.append(f"{word} {bound}" + (" items" if attribute == "min_length" else ""))
        pattern = getattr(item, "pattern", None)
        if pattern == "^(text|json)$":
            rules.append("`text` or `json`")
        elif pattern:
            rules.append(f"matches `{pattern}`")
    return ", ".join(rules)


def configuration_page() -> str:
    """The Markdown of docs/reference/configuration.md."""
    from relightq.settings import Settings

    described = field_descriptions(SETTINGS_SOURCE.read_text())
    sections: list[str] = []
    for name, field in Settings.model_fields.items():
        annotation, description = described[name]
        if not description:
            raise SystemExit(f"relightq/settings.py: {name} has no comment above it")
        facts = [
            f"Type: `{annotation}`",
            f"Default: {_default(field.get_default(call_default_factory=True))}",
        ]
        allowed = _allowed(field.metadata)
        if allowed:
            facts.append(f"Allowed: {allowed}")
        sections.append(f"## `RELIGHTQ_{name.upper()}`\n\n{description}\n\n{' · '.join(facts)}\n")
    return CONFIGURATION_HEADER + "\n" + "\n".join(sections)


def openapi_document() -> str:
    """The JSON of docs/reference/openapi.json: the API's schema at its default settings."""
    import logging
    from unittest import mock

    from prometheus_client import REGISTRY

    # The schema must not depend on this machine's environment or services.
    for name in [name for name in os.environ if name.startswith("RELIGHTQ_")]:
        del os.environ[name]
    logging.disable(logging.CRITICAL)
    from api.app import create_app

    # Registering the fleet collector reads PostgreSQL and Redis once; the schema needs neither.
    with mock.patch.object(REGISTRY, "register"):
        schema = create_app().openapi()
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the generated pages, or with --check say which committed ones are stale."""
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    generated = {CONFIGURATION_PAGE: configuration_page(), OPENAPI_FILE: openapi_document()}
    stale: list[str] = []
    for path, text in generated.items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(stale)}; regenerate with `{REGENERATE}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
