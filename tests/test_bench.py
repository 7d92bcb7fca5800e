"""A small run of each benchmark, so that the suite keeps the benchmarks working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_upload_noop_small(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    subprocess.run(
        [sys.executable, "-m", "bench.upload_noop", "--items", "3000", "--json", str(figures)],
        cwd=ROOT,
        check=True,
        timeout=120,
        capture_output=True,
    )
    result = json.loads(figures.read_text())
    assert result["items"] == 3000
    assert result["items_per_second"] > 0
    assert result["server_peak_rss_mib"] > 0
