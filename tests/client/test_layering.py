"""CLI code lives in relightq.cli alone: the feature packages and the client hold none."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RELIGHTQ = Path(__file__).resolve().parents[2] / "relightq"
CLI_LIBRARIES = {"typer", "rich", "click"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
            if node.module == "relightq":
                roots |= {f"relightq.{alias.name}" for alias in node.names}
            elif node.module == "relightq.cli" or node.module.startswith("relightq.cli."):
                roots.add("relightq.cli")
    return roots


@pytest.mark.parametrize("package", ["batches", "schedules", "client"])
def test_a_package_outside_the_cli_imports_no_cli_library(package: str) -> None:
    files = sorted((RELIGHTQ / package).glob("*.py"))
    assert files
    for path in files:
        used = imported_roots(path) & (CLI_LIBRARIES | {"relightq.cli"})
        assert not used, f"{path.relative_to(RELIGHTQ)} imports {used}"
    assert not (RELIGHTQ / package / "cli.py").exists()
