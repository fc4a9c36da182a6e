"""The project's documents link only to what the repository carries, and the site builds."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
# [text](target) in Markdown, minus images' "!" which make no difference here.
LINK = re.compile(r"\]\(([^)\s]+)\)")
# What would point a reader outside the repository: the contract it was written from, or a
# path on the machine it was written on.
OUTSIDE = re.compile(r"SPEC\.md|\bSPEC\b|\.\./shared|/work/|shared/SPEC")


def relative_links(document: Path) -> list[str]:
    links = LINK.findall(document.read_text())
    return [link for link in links if not re.match(r"^[a-z]+:|^#", link)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(document: Path) -> None:
    for link in relative_links(document):
        target = (document.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT), f"{link} points outside the repository"
        assert target.exists(), f"{link} does not exist"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_document_cites_a_contract_outside_the_repository(document: Path) -> None:
    found = OUTSIDE.findall(document.read_text())
    assert not found, f"cites {found}: point to docs/reference/ pages instead"


def test_code_cites_the_reference_pages_not_an_outside_spec() -> None:
    cited = []
    for folder in ("relightq", "api", "worker", "tests", "bench", "migrations", "scripts"):
        for source in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(source.read_text().splitlines(), 1):
                if re.search(r"\bSPEC\b", line) and source != Path(__file__):
                    cited.append(f"{source.relative_to(ROOT)}:{number}")
    assert not cited, f"cite docs/reference/guarantees.md or upstream.md instead: {cited}"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10 * 1024, "the README is a front door: move detail to docs/"
    lines = readme.splitlines()
    first_block = lines[lines.index("```sh") + 1 : lines.index("```")]
    assert first_block[0].startswith("# 1. try it")
    assert first_block[1] == (
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/relightq demo"
    )
    assert first_block[2].startswith("# 2. test it")
    # .ci/run evaluates the line after "# 2. test it": it must install the docs tools too.
    assert "'.[test,docs]'" in first_block[3] and first_block[3].endswith(".venv/bin/pytest")


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="the docs extra is not installed"
)
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    # --strict turns every warning into a failure: a broken link or anchor, a page left
    # out of the navigation, a missing included file.
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
