"""`relightq demo` as a new user runs it: a fresh folder, no servers, no RELIGHTQ_* env."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from relightq.demo.run import CATALOG_DIR


def test_demo_relights_the_sample_catalog_with_nothing_but_python(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELIGHTQ_")}
    relightq = Path(sys.executable).with_name("relightq")
    done = subprocess.run(
        [str(relightq), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SIMULATOR" in done.stdout and "relit in" in done.stdout
    skus = sorted(p.stem for p in CATALOG_DIR.glob("*.png"))
    results = sorted((tmp_path / "relightq-demo" / "results").glob("*.webp"))
    assert [p.stem for p in results] == skus and len(skus) >= 5
    # The demo goes through the batch path: its manifest lists every SKU as succeeded.
    with (tmp_path / "relightq-demo" / "results.csv").open() as handle:
        manifest = list(csv.DictReader(handle))
    assert sorted((r["external_id"], r["status"]) for r in manifest) == [
        (sku, "succeeded") for sku in skus
    ]
    for path in results:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("WEBP", (768, 960))
