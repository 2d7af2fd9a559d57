"""benchmarks/step_cost.py runs end to end on a tiny batch and writes its JSON and Markdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_cost.py"


@pytest.mark.slow
def test_step_cost_writes_ratios_against_sgd_and_adam_for_every_optimizer(
    tmp_path, shared_data_dir
):
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--batches",
            "16",
            "--optimizers",
            "adam",
            "kfac-fixed-bf16",
            "hf",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--hf-cg",
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
    report = json.loads((tmp_path / "step_cost-threads1.json").read_text())
    rows = {row["optimizer"]: row for row in report["rows"]}
    assert list(rows) == ["sgd", "adam", "kfac-fixed-bf16", "hf"]
    assert rows["adam"]["ratio_to_adam"] == 1.0
    assert rows["sgd"]["ratio"] == 1.0 and all(len(r["seconds"]) == 2 for r in rows.values())
    assert rows["kfac-fixed-bf16"]["amortised_ratio"] >= rows["kfac-fixed-bf16"]["ratio"] > 0
    assert all(1 <= i <= 2 for i in rows["hf"]["cg_iterations"])
    assert report["machine"]["torch_threads"] == 1
    markdown = (tmp_path / "step_cost-threads1.md").read_text()
    assert "| 16 | kfac-fixed-bf16 |" in markdown
