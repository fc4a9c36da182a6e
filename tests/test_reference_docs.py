"""The generated reference pages match the code they are generated from.

Both are written by `python -m scripts.gen_reference`; run it and commit the result when
one of these tests fails.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys

from scripts.gen_reference import (
    CONFIGURATION_PAGE,
    OPENAPI_FILE,
    REGENERATE,
    ROOT,
    configuration_page,
    field_descriptions,
)

STALE = f"is stale: regenerate it with `{REGENERATE}` and commit the result"


def _diff(committed: str, generated: str, name: str) -> str:
    lines = difflib.unified_diff(
        committed.splitlines(),
        generated.splitlines(),
        f"committed {name}",
        "generated",
        n=1,
        lineterm="",
    )
    return "\n".join(list(lines)[:40])


def test_configuration_page_matches_the_settings_class() -> None:
    committed = CONFIGURATION_PAGE.read_text()
    generated = configuration_page()
    assert committed == generated, (
        f"docs/reference/configuration.md {STALE}\n{_diff(committed, generated, 'page')}"
    )


def test_openapi_json_matches_the_app() -> None:
    # A process of its own: the schema is built at default settings, not the suite's.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from scripts.gen_reference import openapi_document; "
            "sys.stdout.write(openapi_document())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    committed = OPENAPI_FILE.read_text()
    if committed != done.stdout:
        old, new = json.loads(committed), json.loads(done.stdout)
        changed = sorted(
            path
            for path in set(old["paths"]) | set(new["paths"])
            if old["paths"].get(path) != new["paths"].get(path)
        )
        raise AssertionError(
            f"docs/reference/openapi.json {STALE}; paths that differ: {changed or 'none'}\n"
            + _diff(committed, done.stdout, "openapi.json")
        )


def test_every_setting_is_described_by_the_comment_above_it() -> None:
    from relightq.settings import Settings

    described = field_descriptions((ROOT / "relightq" / "settings.py").read_text())
    missing = [name for name in Settings.model_fields if not described.get(name, ("", ""))[1]]
    assert not missing, f"give these settings a comment above them in settings.py: {missing}"


def test_descriptions_are_the_comment_lines_right_above_a_field() -> None:
    source = (
        "class Settings:\n"
        "    # The first line\n"
        "    # and the second.\n"
        "    first: int = 1\n"
        "\n"
        "    # Not this one: a blank line separates it.\n"
        "\n"
        "    second: str | None = None  # at the end of the line\n"
        "    third: bool = True\n"
    )
    assert field_descriptions(source) == {
        "first": ("int", "The first line and the second."),
        "second": ("str | None", "at the end of the line"),
        "third": ("bool", ""),
    }


def test_the_check_mode_names_the_command_that_regenerates() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.gen_reference", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--check" in done.stdout
