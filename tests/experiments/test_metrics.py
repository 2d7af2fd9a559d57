"""Metrics against closed forms: a linear-Gaussian VAE has an analytic log p(x)."""

from __future__ import annotations

import math

import pytest
import torch

from natgrad.experiments.metrics import (
    elbo_terms,
    evaluate,
    iwae_log_likelihood,
    negative_elbo,
    negative_log_likelihood,
    reconstruction_error,
)
from natgrad.models import VAE, DeepAutoencoder

D, K = 5, 2  # data and latent dimensions of the linear-Gaussian model


def linear_gaussian_vae(exact_posterior: bool) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, I) with orthogonal columns of W, and q(z|x) on top.

    With W^T W = diag(s^2) the true posterior is N(S W^T (x - b), S), S = diag(1 / (1 + s^2)), which
    the VAE's diagonal encoder represents exactly; ``exact_posterior=False`` perturbs it.
    Returns the model, data x and the analytic log p(x) = log N(x; b, W W^T + I) per example.
    """
    g = torch.Generator().manual_seed(0)
    vae = VAE([D, K], likelihood="gaussian", init="default", generator=g)
    q, _ = torch.linalg.qr(torch.randn(D, K, generator=g, dtype=torch.float64))
    s = torch.tensor([1.5, 0.7], dtype=torch.float64)
    w, b = q * s, torch.randn(D, generator=g, dtype=torch.float64)
    post_var = 1.0 / (1.0 + s**2)
    enc_w = post_var[:, None] * w.T  # mu = enc_w (x - b)
    with torch.no_grad():
        vae.decoder[0].weight.copy_(w)
        vae.decoder[0].bias.copy_(b)
        head = vae.encoder[0]
        head.weight.zero_()
        head.bias.zero_()
        head.weight[:K] = enc_w
        head.bias[:K] = -enc_w @ b
        head.bias[K:] = post_var.log()
        if not exact_posterior:
            head.bias[:K] += 0.8
            head.bias[K:] += 1.0
    x = torch.randn(200, D, generator=g, dtype=torch.float64) * 1.3 + b
    cov = w @ w.T + torch.eye(D, dtype=torch.float64)
    log_px = torch.distributions.MultivariateNormal(b, cov).log_prob(x)
    return vae, x, log_px


def test_iwae_equals_log_likelihood_with_exact_posterior(float64):
    # With q = p(z|x) every importance weight equals p(x): L_k = log p(x) for any k, up to rounding.
    vae, x, log_px = linear_gaussian_vae(exact_posterior=True)
    for k in (1, 7):
        value = iwae_log_likelihood(
            vae, x, k=k, chunk_size=16, generator=torch.Generator().manual_seed(1)
        )
        assert value == pytest.approx(float(log_px.mean()), abs=1e-10)
    # and the negative ELBO is -log p(x) in expectation (KL(q || p(z|x)) = 0); estimator B
    # (closed-form KL) is only unbiased, so average 50 noise draws per example: the mean's std is
    # ~0.01 nats here.
    many = x.repeat(50, 1)
    elbo = negative_elbo(vae, many, chunk_size=1000, generator=torch.Generator().manual_seed(4))
    assert elbo == pytest.approx(-float(log_px.mean()), abs=0.04)


def test_iwae_bound_tightens_with_k(float64):
    # Burda et al. 2016 (monotonicity of the bound): L_1 <= L_k <= log p(x), L_k -> log p(x). With
    # 200 examples the Monte-Carlo error of each mean is ~0.05 nats, far below the gaps measured
    # here (> 0.3 nats).
    vae, x, log_px = linear_gaussian_vae(exact_posterior=False)
    g = torch.Generator().manual_seed(2)
    l1 = iwae_log_likelihood(vae, x, k=1, chunk_size=64, generator=g)
    l10 = iwae_log_likelihood(vae, x, k=10, chunk_size=64, generator=g)
    l2000 = iwae_log_likelihood(vae, x, k=2000, chunk_size=4096, generator=g)
    truth = float(log_px.mean())
    assert l1 < l10 - 0.1 < l2000 - 0.2
    assert l2000 <= truth + 0.02
    assert l2000 == pytest.approx(truth, abs=0.05)
    # L_1 and the closed-form-KL ELBO estimate the same expectation: on 40 draws per example the
    # standard error of their difference is ~0.03 nats.
    many = x.repeat(40, 1)
    l1_many = iwae_log_likelihood(vae, many, k=1, chunk_size=2000, generator=g)
    assert l1_many == pytest.approx(
        -negative_elbo(vae, many, chunk_size=2000, generator=g), abs=0.12
    )


def test_iwae_rejects_bad_k():
    vae = VAE([4, 2], init="default")
    with pytest.raises(ValueError, match=r"Invalid iwae k .*; allowed: an integer >= 1"):
        iwae_log_likelihood(vae, torch.rand(3, 4), k=0)


def test_reconstruction_error_is_summed_squared_error_on_probabilities(float64):
    g = torch.Generator().manual_seed(0)
    model = DeepAutoencoder([6, 3, 2], likelihood="bernoulli", init="default", generator=g)
    x = torch.rand(11, 6, generator=g, dtype=torch.float64)
    probs = torch.sigmoid(model.decoder(model.encoder(x))).detach()
    expected = float(((x - probs) ** 2).sum(1).mean())
    assert reconstruction_error(model, x, chunk_size=4) == pytest.approx(expected, rel=1e-12)
    nll = float(torch.nn.functional.binary_cross_entropy(probs, x, reduction="none").sum(1).mean())
    assert negative_log_likelihood(model, x, chunk_size=5) == pytest.approx(nll, rel=1e-10)


def test_reconstruction_error_gaussian_uses_linear_outputs(float64):
    g = torch.Generator().manual_seed(0)
    model = DeepAutoencoder([6, 3], likelihood="gaussian", init="default", generator=g)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64)
    expected = float(((x - model.decoder(model.encoder(x)).detach()) ** 2).sum(1).mean())
    assert reconstruction_error(model, x, chunk_size=2) == pytest.approx(expected, rel=1e-12)


def test_evaluate_keys_and_vae_reconstruction_at_posterior_mean(float64):
    vae, x, _ = linear_gaussian_vae(exact_posterior=True)
    metrics = evaluate(vae, x[:100], x[100:], chunk_size=50, iwae_samples=3, iwae_examples=10)
    per_split = ("reconstruction_error", "neg_elbo", "kl", "active_units")
    assert set(metrics) == {f"{s}.{m}" for s in ("train", "test") for m in per_split} | {
        "test.iwae_ll"
    }
    recon = vae.decoder(vae.encode(x[100:]).mu).detach()
    assert metrics["test.reconstruction_error"] == pytest.approx(
        float(((x[100:] - recon) ** 2).sum(1).mean())
    )
    assert math.isfinite(metrics["test.iwae_ll"])


def test_kl_and_active_units_follow_the_posterior_means(float64):
    """KL in closed form, and Burda et al.'s active units: Cov_x(mu_j(x)) > 0.01, unit by unit."""
    vae = VAE([6, 3], likelihood="bernoulli", generator=torch.Generator().manual_seed(0)).double()
    x = torch.rand(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64).round()
    with torch.no_grad():
        head = vae.encoder[-1]
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0, :] = 1.0  # mu_0 = sum(x): varies over examples; mu_1, mu_2 = 0; log_var = 0
    terms = elbo_terms(vae, x, chunk_size=7)
    mu0 = x.sum(1)
    assert terms["active_units"] == 1.0
    assert terms["kl"] == pytest.approx(float((0.5 * mu0**2).mean()), rel=1e-12)
    with torch.no_grad():
        head.weight.zero_()
    collapsed = elbo_terms(vae, x, chunk_size=7)
    assert collapsed["active_units"] == 0.0 and collapsed["kl"] == pytest.approx(0.0, abs=1e-12)
