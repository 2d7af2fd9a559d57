"""Closed-form local metrics == torch.func Hessians of the divergences at delta = 0."""

from __future__ import annotations

import pytest
import torch
from torch.func import hessian

from natgrad.distributions import Bernoulli, Gaussian, GaussianLearnedVariance
from natgrad.geometry import DIVERGENCES, FDivergence, NoLocalMetricError, get_divergence

SMOOTH = ("kl", "reverse_kl", "jeffreys", "hellinger", "js", "alpha", "chi2", "mmd")
SETTINGS = {"alpha": {"alpha": 0.35}, "mmd": {"bandwidth": 0.8}}
# Hessians in float64 of smooth closed forms agree with the formulas to rounding; 1e-8 relative
# is the bar. (JS on Gaussians is Gauss-Hermite, exact for the quadratic-in-score
# integrand that the Hessian at delta = 0 reduces to.)
RTOL = 1e-8


def _families(generator: torch.Generator):
    """(name, builder from a flat parameter vector, reference flat parameters) for each family."""
    k = 3
    logits = torch.randn(1, k, generator=generator) * 2
    mean = torch.randn(1, k, generator=generator)
    log_var = torch.randn(1, k, generator=generator) * 0.5
    return [
        ("bernoulli", lambda t: Bernoulli(t.view(1, k)), logits.flatten()),
        ("gaussian", lambda t: Gaussian(t.view(1, k), sigma=0.7), mean.flatten()),
        (
            "gaussian_learned",
            lambda t: GaussianLearnedVariance(t[:k].view(1, k), t[k:].view(1, k)),
            torch.cat([mean, log_var], 1).flatten(),
        ),
    ]


def _hessian_at_zero(divergence, build, eta):
    def fn(delta):
        return divergence.between(build(eta), build(eta + delta)).sum()

    return hessian(fn)(torch.zeros_like(eta))


@pytest.mark.parametrize("name", SMOOTH + ("w2",))
def test_closed_form_metric_equals_torch_func_hessian(float64, name):
    divergence = get_divergence(name, **SETTINGS.get(name, {}))
    for family, build, eta in _families(torch.Generator().manual_seed(3)):
        if name == "w2" and family == "bernoulli":
            continue  # no metric; tested below
        expected = _hessian_at_zero(divergence, build, eta)
        metric = torch.cat([m.flatten() for m in divergence.output_metric(build(eta))])
        torch.testing.assert_close(
            torch.diag(metric), expected, rtol=RTOL, atol=1e-14, msg=f"{name} / {family}"
        )


@pytest.mark.parametrize(
    "name", [n for n, cls in DIVERGENCES.items() if issubclass(cls, FDivergence)]
)
def test_f_divergence_metric_is_f_second_derivative_times_fisher(float64, name):
    divergence = get_divergence(name, **SETTINGS.get(name, {}))
    c = divergence.f_second_derivative_at_one
    for _, build, eta in _families(torch.Generator().manual_seed(4)):
        dist = build(eta)
        # The Fisher of the distribution module (its own curvature), an independent source.
        fisher = dist.curvature_diagonal()
        for m, f in zip(divergence.output_metric(dist), fisher):
            torch.testing.assert_close(m, c * f, rtol=1e-14, atol=0)


def test_fisher_is_expected_score_outer_product_for_bernoulli(float64):
    # E_y[(d/da log p(y|a))^2] = p(1-p) by enumerating y in {0, 1}.
    a = torch.tensor([[-1.2, 0.4, 2.2]])
    p = torch.sigmoid(a)
    expected = p * (1 - p) ** 2 + (1 - p) * p**2
    torch.testing.assert_close(
        get_divergence("kl").output_metric(Bernoulli(a))[0], expected, rtol=1e-14, atol=0
    )


@pytest.mark.parametrize("name", ["w2", "mmd"])
def test_w2_and_mmd_metrics_are_not_multiples_of_the_fisher(float64, name):
    dist = GaussianLearnedVariance(torch.tensor([[0.1, -0.3]]), torch.tensor([[-1.0, 1.0]]))
    ratio = torch.cat(get_divergence(name).output_metric(dist), 1) / torch.cat(
        dist.curvature_diagonal(), 1
    )
    assert ratio.max() / ratio.min() > 1.5


@pytest.mark.parametrize(
    ("name", "family"),
    [("tv", Bernoulli), ("tv", GaussianLearnedVariance), ("w2", Bernoulli)],
)
def test_divergences_without_local_metric_raise_and_are_linear_in_delta(float64, name, family):
    divergence = get_divergence(name)
    dist = family(*[torch.zeros(1, 2)] * (2 if family is GaussianLearnedVariance else 1))
    with pytest.raises(NoLocalMetricError, match="grows like \\|delta\\|"):
        divergence.output_metric(dist)
    # Why: halving delta halves the divergence (first order), so D / |delta|^2 blows up.

    def shifted(t):
        return family(*(p + t for p in dist.params))

    small, smaller = (
        divergence.between(dist, shifted(1e-4)).item(),
        divergence.between(dist, shifted(5e-5)).item(),
    )
    assert small / smaller == pytest.approx(2.0, rel=1e-3)
