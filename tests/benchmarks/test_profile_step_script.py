"""benchmarks/profile_step.py profiles K-FAC steps on a paper autoencoder: where the time goes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_step.py"


def profile(*flags: str) -> str:
    """The output on the CURVES autoencoder: a batch of 8, 1 warm-up and 2 profiled steps."""
    command = [sys.executable, str(SCRIPT), "--problem", "curves", "--batch", "8"]
    command += ["--warmup", "1", "--steps", "2", *flags]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "precision"),
    [((), "float32"), (("--bfloat16",), "bfloat16 solve and model")],
)
def test_profile_names_the_precision_and_the_kfac_solve(flags, precision):
    output = profile(*flags)
    assert f"curves, batch 8, {precision}: " in output
    assert "s per step (profiled)" in output
    assert "_solve_layer" in output  # the damped K-FAC solve is among the profiled functions
