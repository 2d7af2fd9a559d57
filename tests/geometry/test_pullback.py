"""Pulled-back metrics J^T M J: products == dense == the Hessian of the parameter-space
divergence.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import hessian

from natgrad.geometry import (
    NoLocalMetricError,
    PulledBackMetric,
    get_divergence,
    mean_divergence,
    model_outputs,
)
from natgrad.geometry.pullback import flat_parameters
from natgrad.models import VAE, DeepAutoencoder


def _tiny(kind: str):
    torch.manual_seed(0)
    x = torch.rand(5, 6)
    if kind == "vae":
        model = VAE((6, 4, 2), init="default")
        eps = torch.randn(5, 2)
        return model_outputs(model, x, eps), flat_parameters(model)
    model = DeepAutoencoder((6, 4, 2), init="default")
    return model_outputs(model, x), flat_parameters(model)


@pytest.mark.parametrize("kind", ["vae", "autoencoder"])
@pytest.mark.parametrize("name", ["kl", "hellinger", "js", "mmd"])
def test_pulled_back_metric_is_the_parameter_hessian_of_the_divergence(float64, kind, name):
    outputs, theta = _tiny(kind)
    divergence = get_divergence(name)
    metric = PulledBackMetric(outputs, theta, divergence)
    expected = hessian(lambda d: mean_divergence(outputs, theta, d, divergence))(
        torch.zeros_like(theta)
    )
    # The Hessian has no d^2 z / d theta^2 term because dD/dz = 0 at delta = 0: equal to rounding.
    torch.testing.assert_close(metric.to_dense(), expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("kind", ["vae", "autoencoder"])
def test_products_match_the_dense_matrix(float64, kind):
    outputs, theta = _tiny(kind)
    metric = PulledBackMetric(outputs, theta, get_divergence("kl"))
    dense = metric.to_dense()
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(1), dtype=theta.dtype)
    torch.testing.assert_close(metric.matvec(v), dense @ v, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(metric.quadratic_form(v), v @ dense @ v, rtol=1e-10, atol=1e-13)


def test_f_divergence_pullbacks_are_multiples_of_the_fisher(float64):
    outputs, theta = _tiny("vae")
    fisher = PulledBackMetric(outputs, theta, get_divergence("kl")).to_dense()
    jeffreys = PulledBackMetric(outputs, theta, get_divergence("jeffreys")).to_dense()
    torch.testing.assert_close(jeffreys, 2 * fisher, rtol=1e-12, atol=1e-15)


def test_vae_needs_fixed_noise_and_w2_has_no_bernoulli_metric(float64):
    model = VAE((6, 4, 2), init="default")
    theta = flat_parameters(model)
    with pytest.raises(ValueError, match="needs a fixed eps"):
        model_outputs(model, torch.rand(3, 6))(theta)
    outputs = model_outputs(model, torch.rand(3, 6), torch.zeros(3, 2))
    with pytest.raises(NoLocalMetricError, match="Bernoulli"):
        PulledBackMetric(outputs, theta, get_divergence("w2"))


def test_kl_pullback_equals_the_curvature_core_fisher(float64):
    # The autoencoder's KL metric pulled back is the Fisher of natgrad.curvature.exact (an
    # independent implementation built from the loss terms).
    from natgrad.curvature.exact import dense_fisher
    from natgrad.losses import build_loss

    torch.manual_seed(0)
    x = torch.rand(5, 6)
    model = DeepAutoencoder((6, 4, 2), init="default")
    metric = PulledBackMetric(model_outputs(model, x), flat_parameters(model), get_divergence("kl"))
    torch.testing.assert_close(
        metric.to_dense(), dense_fisher(build_loss(model, x)), rtol=1e-10, atol=1e-14
    )
