"""benchmarks/step_flops.py counts a K-FAC step's arithmetic per phase: checked against the
closed-form counts of the matrix products of a chain of Linear layers.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def step_flops():
    """The script as a module (its directory on the path, as when it runs as a script)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("step_flops", BENCHMARKS / "step_flops.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def products(widths: tuple[int, ...]) -> tuple[int, int]:
    """``S = sum_l d_in d_out`` over the mirrored chain, and the first layer's ``d_in d_out``."""
    chain = widths + tuple(reversed(widths[:-1]))
    return sum(a * b for a, b in zip(chain, chain[1:])), chain[0] * chain[1]


CURVES = (784, 400, 200, 100, 50, 25, 6)


def test_an_adam_step_is_forward_plus_weight_and_input_gradients(step_flops):
    # forward 2NS, weight gradients 2NS, input gradients 2N(S - first layer): the input needs none
    total, first = products(CURVES)
    assert step_flops.count_adam("curves", 16) == 2 * 16 * (3 * total - first)


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_kfac_phases_match_the_closed_form_counts(step_flops, fraction):
    total, first = products(CURVES)
    batch, model_batch = 16, int(16 * fraction)
    phases = step_flops.count_kfac(
        "curves", batch, warmup=2, steps=3, options={"step": {"model_fraction": fraction}}
    )
    # the closure is Adam's loss and gradient
    assert phases["loss and gradient"] == step_flops.count_adam("curves", batch)
    # one primal pass; per direction (Delta and delta_0) dW a + W da in every layer but the first,
    # whose input has no tangent; the first layer's product with that zero tangent once (torch's
    # formula materialises it under the counter); the (2, 2) Gram of the 784 outputs
    directions = 2
    expected_model = (
        2 * model_batch * total
        + directions * 2 * model_batch * (2 * total - first)
        + 2 * model_batch * first
        + 2 * directions * directions * model_batch * CURVES[0]
    )
    assert phases["quadratic model"] == pytest.approx(expected_model)
    # the damped solve: B^{-1} V A^{-1} per layer, (d_out x d_out)(d_out x d_in+1)(d_in+1 x d_in+1)
    chain = CURVES + tuple(reversed(CURVES[:-1]))
    solve = sum(2 * b * b * (a + 1) + 2 * b * (a + 1) * (a + 1) for a, b in zip(chain, chain[1:]))
    assert phases["damped solve"] == pytest.approx(solve)
    assert phases["other"] == 0


@pytest.mark.slow
def test_the_script_prints_the_phase_table():
    command = [sys.executable, str(BENCHMARKS / "step_flops.py"), "--problem", "curves"]
    command += ["--batch", "16", "--warmup", "1", "--steps", "2"]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    assert "curves autoencoder, batch 16, K-FAC defaults" in output
    for phase in ("loss and gradient", "quadratic model", "damped solve", "statistics"):
        assert f"| {phase} |" in output
    assert "| **K-FAC step** |" in output
