"""The pure functions of the shared step (Martens & Grosse 2015, sections 6-7), each alone."""

from __future__ import annotations

import math

import pytest
import torch

from natgrad.optim.config import DampingConfig
from natgrad.optim.natural import (
    QuadraticModelStep,
    combine_update,
    damped_gram,
    gamma_candidates,
    levenberg_marquardt_update,
    precondition,
    quadratic_model_coefficients,
    reduction_ratio,
    reject_nonfinite,
)


def _quadratic(delta, curvature, grad):
    return 0.5 * delta @ curvature @ delta + grad @ delta


def test_two_direction_model_is_the_minimiser_over_the_span(float64):
    # M(a u + m w) restricted to span{u, w} is minimised by the 2x2 solve; compare against a
    # brute-force check that perturbing (alpha, mu) never lowers M, and the predicted change
    # formula.
    g = torch.Generator().manual_seed(0)
    root = torch.randn(6, 6, generator=g)
    curvature = root @ root.T + 0.1 * torch.eye(6)
    grad, u, w = (torch.randn(6, generator=g) for _ in range(3))
    basis = torch.stack([u, w], 1)
    gram = damped_gram(basis.T @ curvature @ basis, basis.T @ basis, 0.3)
    step = quadratic_model_coefficients(gram, basis.T @ grad)
    damped = curvature + 0.3 * torch.eye(6)
    best = _quadratic(step.alpha * u + step.mu * w, damped, grad)
    assert step.predicted_change == pytest.approx(float(best), rel=1e-12)
    for da, dm in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)]:
        assert _quadratic((step.alpha + da) * u + (step.mu + dm) * w, damped, grad) > best


def test_one_direction_model_is_section_6_4_rescaling(float64):
    gram, grads = torch.tensor([[4.0]]), torch.tensor([-2.0])
    step = quadratic_model_coefficients(gram, grads)
    assert step == QuadraticModelStep(alpha=0.5, mu=0.0, predicted_change=-0.5)


def test_parallel_previous_update_uses_the_pseudo_inverse(float64):
    # delta_0 = 2 Delta makes the 2x2 matrix singular; the pseudo-inverse still gives the optimum
    # of the 1-D problem (alpha + 2 mu = optimal scale) and a finite prediction.
    u = torch.tensor([1.0, 2.0])
    basis = torch.stack([u, 2 * u], 1)
    curvature, grad = torch.diag(torch.tensor([2.0, 3.0])), torch.tensor([-1.0, -1.0])
    step = quadratic_model_coefficients(basis.T @ curvature @ basis, basis.T @ grad)
    optimal_scale = -(grad @ u) / (u @ curvature @ u)
    assert step.alpha + 2 * step.mu == pytest.approx(float(optimal_scale), rel=1e-12)
    assert step.predicted_change == pytest.approx(
        float(-0.5 * (grad @ u) ** 2 / (u @ curvature @ u)), rel=1e-12
    )


def test_quadratic_model_rejects_bad_shapes():
    with pytest.raises(ValueError, match="k in"):
        quadratic_model_coefficients(torch.eye(3), torch.ones(3))
    with pytest.raises(ValueError, match="gram"):
        quadratic_model_coefficients(torch.eye(2), torch.ones(1))


@pytest.mark.parametrize(
    "actual, predicted, expected",
    [
        (-3.0, -4.0, 0.75),
        (0.1, -1.0, -math.inf),
        (math.nan, -1.0, -math.inf),
        (-1.0, 0.0, math.nan),
    ],
)
def test_reduction_ratio(actual, predicted, expected):
    rho = reduction_ratio(actual, predicted)
    assert (math.isnan(rho) and math.isnan(expected)) or rho == expected


@pytest.mark.parametrize(
    "rho, expected",
    [(0.9, 100 * 0.5), (0.5, 100.0), (0.1, 100 * 2.0), (-math.inf, 200.0), (math.nan, 200.0)],
)
def test_levenberg_marquardt_update(rho, expected):
    assert levenberg_marquardt_update(100.0, rho, decrease=0.5, increase=2.0) == expected


def test_omega_matches_paper_values():
    config = DampingConfig(adapt_every=5, gamma_every=20)
    assert config.lm_decrease == pytest.approx(0.95**5)
    assert config.gamma_factor == pytest.approx(0.95**10)


def test_gamma_candidates_clip_and_deduplicate():
    assert gamma_candidates(1.0, 0.5, 0.1, 10.0) == (0.5, 1.0, 2.0)
    assert gamma_candidates(1.0, 0.5, 0.1, 1.0) == (0.5, 1.0)
    assert gamma_candidates(0.15, 0.5, 0.1, 1.0) == (0.1, 0.15, 0.3)


def test_reject_nonfinite():
    finite = [torch.ones(3), torch.zeros(2)]
    assert not reject_nonfinite(finite, 1.0, -2.0)
    assert reject_nonfinite([torch.ones(3), torch.tensor([0.0, math.nan])])
    assert reject_nonfinite([torch.tensor([math.inf])])
    assert reject_nonfinite(finite, math.nan)


class _Diagonal:
    def __init__(self, diag):
        self.diag = diag

    def solve(self, vectors, tikhonov):
        return [v / (d + tikhonov) for v, d in zip(vectors, self.diag)]


def test_precondition_and_combine():
    direction = precondition(_Diagonal([torch.tensor([1.0, 3.0])]), [torch.tensor([2.0, 8.0])], 1.0)
    torch.testing.assert_close(direction[0], torch.tensor([-1.0, -2.0]))
    update = combine_update(
        direction, [torch.tensor([1.0, 1.0])], QuadraticModelStep(2.0, 0.5, -1.0)
    )
    torch.testing.assert_close(update[0], torch.tensor([-1.5, -3.5]))


def test_gamma_candidates_never_turn_an_increase_into_a_cut():
    # gamma_0 = sqrt(150) above gamma_max = 1 (the autoencoder defaults): "increase" stays gamma.
    gamma = 150**0.5
    assert gamma_candidates(gamma, 0.5, 0.01, 1.0) == (0.5 * gamma, gamma)
    # and symmetrically below gamma_min: "decrease" stays gamma
    assert gamma_candidates(0.05, 0.5, 0.1, 1.0) == (0.05, 0.1)
