"""The study's building blocks (directions, metric training) and the `natgrad geometry` CLI path."""

from __future__ import annotations

import json

import pytest
import torch

from natgrad.cli import main as cli_main
from natgrad.experiments.geometry_study.directions import (
    steepest_descent_direction,
    top_eigenvectors,
)
from natgrad.experiments.geometry_study.metric_training import (
    MetricTrainingConfig,
    train_with_metric,
)
from natgrad.geometry import PulledBackMetric, get_divergence, model_outputs
from natgrad.geometry.pullback import flat_parameters
from natgrad.models import VAE, DeepAutoencoder


def _fisher(float_model=DeepAutoencoder):
    torch.manual_seed(0)
    model = float_model((6, 4, 2), init="default")
    return PulledBackMetric(
        model_outputs(model, torch.rand(5, 6)), flat_parameters(model), get_divergence("kl")
    )


def test_steepest_descent_direction_solves_the_damped_system(float64):
    metric = _fisher()
    g = torch.randn(metric.dim, generator=torch.Generator().manual_seed(2))
    result = steepest_descent_direction(metric.matvec, g, 0.1, max_iterations=500)
    expected = torch.linalg.solve(metric.to_dense() + 0.1 * torch.eye(metric.dim), g)
    # Martens' relative-progress rule stops near, not at, the solution: 1e-3 relative.
    torch.testing.assert_close(
        result.solution, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item()
    )


def test_top_eigenvectors_match_dense_eigendecomposition(float64):
    metric = _fisher()
    values, vectors = top_eigenvectors(metric.matvec, metric.dim, 2, torch.float64)
    dense_values, dense_vectors = torch.linalg.eigh(metric.to_dense())
    torch.testing.assert_close(
        torch.from_numpy(values.copy()), dense_values.flip(0)[:2], rtol=1e-6, atol=0
    )
    for i in range(2):
        assert abs(float(vectors[i] @ dense_vectors[:, -1 - i])) == pytest.approx(1.0, abs=1e-6)


def test_every_f_divergence_trains_identically_and_differs_from_mmd(float64):
    # Relative damping makes (c F + c lambda I)^{-1} g = (F + lambda I)^{-1} g: KL and Hellinger
    # runs must coincide step for step; MMD's metric is not a multiple of F, so its run differs.
    torch.manual_seed(0)
    data = torch.rand(40, 6)
    config = MetricTrainingConfig(steps=3, batch_size=10, cg_iterations=10, eval_every=1)
    curves = {}
    for name in ("kl", "hellinger", "mmd"):
        torch.manual_seed(0)
        model = VAE((6, 4, 2), init="default")
        curves[name] = train_with_metric(
            model, data, data[:8], get_divergence(name), config, name
        ).test_loss
    torch.testing.assert_close(
        torch.tensor(curves["hellinger"]), torch.tensor(curves["kl"]), rtol=1e-9, atol=0
    )
    assert curves["mmd"][-1] != pytest.approx(curves["kl"][-1], rel=1e-6)


def test_metric_training_config_rejects_bad_values():
    with pytest.raises(
        ValueError, match="Invalid MetricTrainingConfig.steps: 0; allowed: an integer >= 1"
    ):
        MetricTrainingConfig(steps=0)
    with pytest.raises(ValueError, match="lm_factor"):
        MetricTrainingConfig(lm_factor=1.5)


@pytest.mark.slow
def test_cli_geometry_quick_writes_report_with_exact_f_divergence_ratios(shared_data_dir, tmp_path):
    assert (
        cli_main(
            ["geometry", "--out", str(tmp_path), "--quick", "--data-dir", str(shared_data_dir)]
        )
        == 0
    )
    assert (tmp_path / "report.md").read_text().startswith("# Perturbation-norm study")
    results = json.loads((tmp_path / "results.json").read_text())
    ratios = results["probes"]["autoencoder"]["ratio_to_fisher"]
    # u^T G_M u / u^T F u = f''(1) for every direction: Jeffreys 2, Hellinger 1/4.
    assert all(r == pytest.approx(2.0, rel=1e-10) for r in ratios["Jeffreys"].values())
    assert all(r == pytest.approx(0.25, rel=1e-10) for r in ratios["Hellinger^2"].values())
    assert "W2^2" in results["probes"]["vae"]["no_metric"]
    assert (tmp_path / "training.png").is_file()
