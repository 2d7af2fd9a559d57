"""benchmarks/layout.py times both grid layouts end to end on a tiny batch and writes its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "layout.py"


@pytest.mark.slow
def test_layout_reports_both_layouts_with_their_throughput(tmp_path, shared_data_dir):
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--optimizers",
            "adam",
            "--batch",
            "8",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--data-dir",
            str(shared_data_dir),
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads((tmp_path / "layout.json").read_text())
    layouts = report["results"]["adam"]
    assert layouts["all-cores"]["processes"] == 1
    assert (
        layouts["per-core"]["processes"] == report["machine"]["cores"]
        or layouts["per-core"]["threads_each"] == 1
    )
    assert all(
        m["steps_per_second"] > 0 and len(m["runs"]) == m["processes"] for m in layouts.values()
    )
    assert "| adam | 1 process x" in (tmp_path / "layout.md").read_text()
