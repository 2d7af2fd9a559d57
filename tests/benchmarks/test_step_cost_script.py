"""benchmarks/step_cost.py runs end to end on a tiny batch and writes its JSON and Markdown; its
amortised cost is the mean over a whole schedule window.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from natgrad.models import DeepAutoencoder
from natgrad.optim import KFAC

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_cost.py"


@pytest.fixture(scope="module")
def step_cost():
    """The script as a module."""
    spec = importlib.util.spec_from_file_location("step_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_amortised_mean_counts_the_periodic_step_at_its_rate(step_cost):
    # 19 ordinary steps of 1 s and one of 21 s (a refresh): 2 s per step over the window of 20.
    seconds = [1.0] * 19 + [21.0]
    assert step_cost.amortised_mean(seconds, 20) == 2.0
    assert step_cost.amortised_mean(seconds + [5.0] * 7, 20) == 2.0  # only whole windows count
    assert step_cost.amortised_mean(seconds[:19], 20) is None


def test_periodic_window_is_the_least_common_multiple_of_the_schedule(step_cost):
    model = DeepAutoencoder(sizes=(6, 4, 2), generator=torch.Generator().manual_seed(0))
    assert step_cost.periodic_window(KFAC(model)) == 20  # T1, T2, T3 = 5, 20, 20
    assert step_cost.periodic_window(KFAC(model, schedule={"statistics_every": 3})) == 60
    assert step_cost.periodic_window(KFAC(model, damping={"adapt_every": 8})) == 40


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
            "20",
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
    assert rows["sgd"]["ratio"] == 1.0 and all(len(r["seconds"]) == 20 for r in rows.values())
    kfac = rows["kfac-fixed-bf16"]
    assert kfac["amortised_window"] == 20 and kfac["ratio"] > 0
    assert kfac["amortised_seconds"] == pytest.approx(sum(kfac["seconds"]) / 20)
    assert "amortised_seconds" not in rows["adam"]
    assert all(1 <= i <= 2 for i in rows["hf"]["cg_iterations"])
    assert report["machine"]["torch_threads"] == 1
    markdown = (tmp_path / "step_cost-threads1.md").read_text()
    assert "| 16 | kfac-fixed-bf16 |" in markdown
