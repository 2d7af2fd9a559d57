"""benchmarks/scaling.py runs end to end at tiny scale, and its bytes formula matches every measured
step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scaling.py"


@pytest.mark.slow
def test_scaling_compares_the_layouts_and_the_traffic_formula_holds(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
        ),
    }
    report = tmp_path / "scaling.md"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--dataset",
            "synthetic",
            "--sizes",
            "64",
            "16",
            "4",
            "--batches",
            "40",
            "--steps",
            "8",
            "--eval-every",
            "4",
            "--target-error",
            "1000",
            "--out",
            str(tmp_path / "runs"),
            "--report",
            str(report),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in report.read_text().splitlines() if line.startswith("| 40 |")]
    assert (
        len(rows) == 2
        and "1 process x 2 threads" in rows[0]
        and "2 processes x 1 thread" in rows[1]
    )
    assert rows[1].endswith("| 8/8 steps |")  # the formula gives every step's measured bytes
    assert (
        "%" in rows[1].split("|")[8] and rows[0].split("|")[8].strip() == "-"
    )  # communication share: 2 processes
