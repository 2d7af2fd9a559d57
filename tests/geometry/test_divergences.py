"""Divergence values against independent computations (scipy quadrature, torch.distributions,
sums).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from natgrad.distributions import (
    Bernoulli,
    DiagonalGaussianPosterior,
    Gaussian,
    GaussianLearnedVariance,
)
from natgrad.geometry import NoLocalMetricError, get_divergence
from natgrad.geometry.coordinates import BernoulliCoordinates, GaussianCoordinates

# (m1, s1, m2, s2): equal variances, different variances both ways, a large separation.
GAUSSIAN_CASES = [
    (0.3, 0.8, -0.4, 1.1),
    (1.0, 1.5, 0.2, 0.9),
    (0.0, 1.0, 2.5, 1.0),
    (-0.7, 0.6, 0.1, 0.6),
]

# Integrands of the f-divergences, written from their definitions, for scipy.integrate.quad.
F_INTEGRANDS = {
    "kl": lambda p, q: p * np.log(p / q),
    "reverse_kl": lambda p, q: q * np.log(q / p),
    "jeffreys": lambda p, q: (p - q) * np.log(p / q),
    "hellinger": lambda p, q: 0.5 * (np.sqrt(p) - np.sqrt(q)) ** 2,
    "js": lambda p, q: 0.5 * p * np.log(2 * p / (p + q)) + 0.5 * q * np.log(2 * q / (p + q)),
    "chi2": lambda p, q: (p - q) ** 2 / q,
    "tv": lambda p, q: 0.5 * np.abs(p - q),
}


def _alpha_integrand(alpha):
    a = (1 - alpha) / 2
    return lambda p, q: 4.0 / (1 - alpha**2) * (a * p + (1 - a) * q - p**a * q ** (1 - a))


def _gauss(m, s):
    return GaussianCoordinates(
        torch.tensor([m]), torch.tensor([2 * math.log(s)]), learned_variance=True
    )


def _quad(fn, lo=-40.0, hi=40.0):
    return integrate.quad(fn, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=400)[0]


@pytest.mark.parametrize("case", GAUSSIAN_CASES)
@pytest.mark.parametrize("name", sorted(F_INTEGRANDS) + ["alpha"])
def test_gaussian_f_divergences_match_quadrature(float64, name, case):
    m1, s1, m2, s2 = case
    if name == "chi2" and 2 * s2**2 <= s1**2:
        pytest.skip("chi^2 infinite")
    integrand = _alpha_integrand(0.3) if name == "alpha" else F_INTEGRANDS[name]
    divergence = get_divergence("alpha", alpha=0.3) if name == "alpha" else get_divergence(name)
    dp, dq = stats.norm(m1, s1).pdf, stats.norm(m2, s2).pdf
    width = 15 * max(s1, s2)  # densities stay far above underflow on this range
    expected = _quad(lambda x: integrand(dp(x), dq(x)), min(m1, m2) - width, max(m1, m2) + width)
    value = divergence.elementwise(_gauss(m1, s1), _gauss(m2, s2)).item()
    # quad's error estimate is < 1e-12 here; 128-node Gauss-Hermite (JS) is within 1e-10 for these
    # standard-deviation ratios (<= 1.7, see JensenShannon's docstring).
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-11)


def test_gaussian_chi2_is_infinite_when_integral_diverges(float64):
    # int p^2/q diverges when 2 s2^2 <= s1^2.
    value = get_divergence("chi2").elementwise(_gauss(0.0, 2.0), _gauss(0.0, 1.0))
    assert torch.isinf(value).all()


@pytest.mark.parametrize("case", GAUSSIAN_CASES[:2])
def test_gaussian_w2_matches_quantile_integral(float64, case):
    m1, s1, m2, s2 = case
    # W2^2 = int_0^1 (F1^{-1}(u) - F2^{-1}(u))^2 du in one dimension.
    expected = _quad(
        lambda u: (stats.norm(m1, s1).ppf(u) - stats.norm(m2, s2).ppf(u)) ** 2, 0.0, 1.0
    )
    value = get_divergence("w2").elementwise(_gauss(m1, s1), _gauss(m2, s2)).item()
    assert value == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("case", GAUSSIAN_CASES[:2])
def test_gaussian_mmd_matches_quadrature_of_the_kernel(float64, case):
    m1, s1, m2, s2 = case
    h = 0.7

    def expected_kernel(ma, sa, mb, sb):
        # E k(X, Y) = E exp(-W^2 / (2 h^2)) with W = X - Y ~ N(ma - mb, sa^2 + sb^2).
        w = stats.norm(ma - mb, math.hypot(sa, sb))
        return _quad(lambda t: w.pdf(t) * math.exp(-t * t / (2 * h * h)), -30.0, 30.0)

    expected = (
        expected_kernel(m1, s1, m1, s1)
        + expected_kernel(m2, s2, m2, s2)
        - 2 * expected_kernel(m1, s1, m2, s2)
    )
    value = get_divergence("mmd", bandwidth=h).elementwise(_gauss(m1, s1), _gauss(m2, s2)).item()
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def _bernoulli_reference(name: str, p: float, q: float) -> float:
    """Each divergence from its definition, summed over y in {0, 1} in numpy."""
    P, Q = np.array([1 - p, p]), np.array([1 - q, q])
    if name in F_INTEGRANDS:
        return float(F_INTEGRANDS[name](P, Q).sum())
    if name == "alpha":
        return float(_alpha_integrand(-0.4)(P, Q).sum())
    if name == "w2":  # optimal coupling on {0, 1} moves |p - q| mass over distance 1
        return abs(p - q)
    kernel = np.exp(-(np.subtract.outer([0.0, 1.0], [0.0, 1.0]) ** 2) / (2 * 1.3**2))
    return float(P @ kernel @ P + Q @ kernel @ Q - 2 * P @ kernel @ Q)


@pytest.mark.parametrize("name", sorted(F_INTEGRANDS) + ["alpha", "w2", "mmd"])
def test_bernoulli_divergences_match_definitions(float64, name):
    settings = {"alpha": {"alpha": -0.4}, "mmd": {"bandwidth": 1.3}}.get(name, {})
    divergence = get_divergence(name, **settings)
    a, b = torch.tensor([-2.0, 0.3, 1.7]), torch.tensor([0.5, 0.1, -3.0])
    values = divergence.elementwise(BernoulliCoordinates(a), BernoulliCoordinates(b))
    for i in range(3):
        expected = _bernoulli_reference(
            name, torch.sigmoid(a[i]).item(), torch.sigmoid(b[i]).item()
        )
        assert values[i].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_kl_agrees_with_torch_distributions_and_sums_over_coordinates(float64):
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Bernoulli(logits=a), torch.distributions.Bernoulli(logits=b)
    ).sum(1)
    torch.testing.assert_close(
        get_divergence("kl").between(Bernoulli(a), Bernoulli(b)), expected, rtol=1e-12, atol=0
    )
    m, v, m2, v2 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)

    def normal(mean, lv):
        return torch.distributions.Normal(mean, torch.exp(0.5 * lv))

    expected = torch.distributions.kl_divergence(normal(m, v), normal(m2, v2)).sum(1)
    got = get_divergence("kl").between(
        GaussianLearnedVariance(m, v), DiagonalGaussianPosterior(m2, v2)
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_alpha_limits_and_hellinger_relation(float64):
    p, q = _gauss(0.2, 0.9), _gauss(-0.3, 1.2)
    kl, rkl = get_divergence("kl").elementwise(p, q), get_divergence("reverse_kl").elementwise(p, q)
    # Amari: alpha -> -1 is KL(P||Q), alpha -> +1 is KL(Q||P), alpha = 0 is 4 H^2.
    torch.testing.assert_close(
        get_divergence("alpha", alpha=-1 + 1e-7).elementwise(p, q), kl, rtol=1e-6, atol=0
    )
    torch.testing.assert_close(
        get_divergence("alpha", alpha=1 - 1e-7).elementwise(p, q), rkl, rtol=1e-6, atol=0
    )
    hellinger = get_divergence("hellinger").elementwise(p, q)
    torch.testing.assert_close(
        get_divergence("alpha", alpha=0.0).elementwise(p, q), 4 * hellinger, rtol=1e-12, atol=0
    )


def test_identical_distributions_have_zero_divergence(float64):
    p = _gauss(0.4, 0.7)
    for name in ("kl", "hellinger", "js", "chi2", "tv", "w2", "mmd", "alpha"):
        assert get_divergence(name).elementwise(p, p).item() == pytest.approx(0.0, abs=1e-14), name


def test_invalid_arguments_name_the_problem(float64):
    with pytest.raises(ValueError, match="Invalid divergence: .*; allowed:"):
        get_divergence("kullback")
    with pytest.raises(ValueError, match="open interval"):
        get_divergence("alpha", alpha=1.0)
    with pytest.raises(ValueError, match="Invalid MMD bandwidth: .*; allowed: a number > 0"):
        get_divergence("mmd", bandwidth=0.0)
    with pytest.raises(ValueError, match="one family"):
        get_divergence("kl").between(Bernoulli(torch.zeros(2, 3)), Gaussian(torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="fixed or both with learned"):
        get_divergence("kl").between(
            Gaussian(torch.zeros(2, 3)),
            GaussianLearnedVariance(torch.zeros(2, 3), torch.zeros(2, 3)),
        )
    with pytest.raises(TypeError, match="Invalid distribution: .*; allowed:"):
        get_divergence("kl").between(torch.zeros(2), torch.zeros(2))
    with pytest.raises(NoLocalMetricError, match="no Hessian at delta = 0"):
        get_divergence("tv").output_metric(Gaussian(torch.zeros(2, 3)))
