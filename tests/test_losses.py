"""Losses: values against the closed forms, re-evaluation as a pure function, term curvature."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from natgrad.distributions import curvature_product
from natgrad.losses import Loss, LossTerm, build_loss, kl_term, likelihood_term
from natgrad.models import VAE, DeepAutoencoder


def _vae() -> VAE:
    torch.manual_seed(0)
    return VAE((6, 5, 3), likelihood="bernoulli", activation="tanh")


def test_autoencoder_loss_is_mean_cross_entropy(float64):
    torch.manual_seed(0)
    model = DeepAutoencoder((6, 4, 2), init="default")
    x = torch.rand(5, 6)
    loss = build_loss(model, x)
    logits = model(x).likelihood.params[0]
    expected = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / 5
    assert [t.name for t in loss.terms] == ["likelihood"]
    torch.testing.assert_close(loss.value, expected, rtol=1e-12, atol=0)


def test_vae_loss_is_negative_elbo_with_stored_noise(float64):
    model = _vae()
    x = torch.rand(4, 6)
    loss = build_loss(model, x, generator=torch.Generator().manual_seed(1))
    eps = loss.inputs[1]
    out = model(x, eps)
    mu, log_var = out.posterior.params
    kl = 0.5 * (mu**2 + log_var.exp() - log_var - 1).sum(1)
    nll = F.binary_cross_entropy_with_logits(out.likelihood.params[0], x, reduction="none").sum(1)
    torch.testing.assert_close(loss.value, (kl + nll).mean(), rtol=1e-12, atol=0)
    assert [t.name for t in loss.terms] == ["likelihood", "kl"]
    assert [t.is_likelihood for t in loss.terms] == [True, False]


def test_same_generator_seed_gives_same_noise(float64):
    model, x = _vae(), torch.rand(3, 6)
    a = build_loss(model, x, generator=torch.Generator().manual_seed(7))
    b = build_loss(model, x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.inputs[1], b.inputs[1], rtol=0, atol=0)


def test_value_at_is_a_pure_function_of_params(float64):
    model, x = _vae(), torch.rand(4, 6)
    loss = build_loss(model, x, generator=torch.Generator().manual_seed(2))
    params = {k: v.detach().clone() for k, v in loss.parameters().items()}
    torch.testing.assert_close(loss.value_at(params), loss.value.detach(), rtol=1e-14, atol=0)
    shifted = {k: v + 0.1 for k, v in params.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    torch.testing.assert_close(
        loss.value_at(shifted), loss.rebuild().value.detach(), rtol=1e-14, atol=0
    )


def test_kl_term_hessian_is_autograd_hessian(float64):
    """KL in (mu, v) has Hessian diag(1, e^v/2) (Kingma & Welling 2014, App. B, differentiated
    twice).
    """
    from natgrad.distributions import DiagonalGaussianPosterior

    mu, v = torch.randn(1, 3), torch.randn(1, 3)

    def kl(flat):
        return (
            DiagonalGaussianPosterior(flat[:3].unsqueeze(0), flat[3:].unsqueeze(0))
            .kl_to_standard_normal()
            .sum()
        )

    hess = torch.autograd.functional.hessian(kl, torch.cat([mu, v], 1).squeeze(0))
    term = kl_term(DiagonalGaussianPosterior(mu, v))
    torch.testing.assert_close(
        hess, torch.diag(torch.cat(term.curvature, 1).squeeze(0)), rtol=1e-12, atol=1e-14
    )


def test_bernoulli_term_curvature_product_and_square_root(float64):
    from natgrad.distributions import Bernoulli

    logits, target, vec = torch.randn(2, 4), torch.rand(2, 4), torch.randn(2, 4)
    term = likelihood_term(Bernoulli(logits), target)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(
        curvature_product(term.curvature[0], vec), p * (1 - p) * vec, rtol=1e-14, atol=0
    )
    torch.testing.assert_close(term.curvature_sqrt()[0] ** 2, p * (1 - p), rtol=1e-14, atol=0)


def test_default_sampler_has_the_curvature_as_covariance(float64):
    """E[s^2] = c. Each column averages 20000 draws: the relative standard error of the mean of
    s^2 (s Gaussian, Var(s^2) = 2 c^2) is sqrt(2/20000) = 1%, so 5% is five standard errors.
    """
    c = torch.tensor([0.5, 2.0, 4.0]).expand(20000, 3)
    term = LossTerm("custom", (torch.zeros(20000, 3),), torch.zeros(20000), (c,))
    second_moment = (term.sample_output_gradient(torch.Generator().manual_seed(0))[0] ** 2).mean(0)
    torch.testing.assert_close(second_moment, c[0], rtol=0.05, atol=0)


def test_user_defined_terms_via_from_model(float64):
    model = DeepAutoencoder((6, 4, 2), init="default")
    x = torch.rand(3, 6)

    def terms(out, inputs):
        code = out.code
        penalty = LossTerm(
            "code_l2", (code,), 0.5 * (code**2).sum(1), (torch.ones_like(code.detach()),)
        )
        return (likelihood_term(out.likelihood, inputs[0]), penalty)

    loss = Loss.from_model(model, (x,), terms)
    expected = build_loss(model, x).value + 0.5 * (model(x).code ** 2).sum(1).mean()
    torch.testing.assert_close(loss.value, expected, rtol=1e-12, atol=0)


def test_eps_for_autoencoder_rejected():
    with pytest.raises(ValueError, match="eps is only used by a VAE, got eps for DeepAutoencoder"):
        build_loss(DeepAutoencoder((6, 4, 2)), torch.rand(2, 6), eps=torch.zeros(2, 3))


def test_wrong_eps_shape_rejected():
    with pytest.raises(ValueError, match=r"eps must have shape \(2, 3\)"):
        build_loss(_vae(), torch.rand(2, 6), eps=torch.zeros(2, 4))


def test_misaligned_term_rejected():
    with pytest.raises(ValueError, match="must be aligned"):
        LossTerm("bad", (torch.zeros(1, 2),), torch.zeros(1), ())


def test_kl_value_closed_form_at_standard_normal():
    from natgrad.distributions import DiagonalGaussianPosterior

    term = kl_term(DiagonalGaussianPosterior(torch.zeros(1, 2), torch.zeros(1, 2)))
    assert math.isclose(float(term.values), 0.0, abs_tol=1e-12)
