"""docs/client.md's examples are Python that parses, calling methods the client has."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from relightq.client import RelightqClient

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
# A client call in an example: the docs name the client `client` or `relightq`.
CALL = re.compile(r"\b(?:client|relightq)\.(\w+)\(")


def test_every_example_parses_and_calls_only_what_the_client_has() -> None:
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 8
    called: set[str] = set()
    for block in blocks:
        ast.parse(block)  # a SyntaxError names the line
        called |= set(CALL.findall(block))
    assert called, "the examples call the client"
    assert called <= set(dir(RelightqClient)), called - set(dir(RelightqClient))


def test_the_table_of_calls_lists_every_public_method() -> None:
    text = DOC.read_text()
    table = text[text.index("## Every call") :]
    public = {
        name
        for name, value in vars(RelightqClient).items()
        if callable(value) and not name.startswith("_") and name not in {"close", "with_retry"}
    }
    listed = set(re.findall(r"`(\w+)`", table))
    assert public <= listed, public - listed
