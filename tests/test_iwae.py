"""The importance-weighted bound as a loss: its value, its gradient, DReG, the weighted sampler,
refusals.

Independent references are written here with ``torch.distributions`` on the model's encoder and
decoder, never with natgrad's own loss code.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from natgrad.experiments.metrics import iwae_log_likelihood
from natgrad.iwae import build_iwae_loss
from natgrad.losses import build_loss
from natgrad.models import VAE, DeepAutoencoder

N, D, LATENT, K = 5, 6, 3, 4


def _vae() -> VAE:
    torch.manual_seed(0)
    return VAE((D, 5, LATENT), likelihood="bernoulli", activation="tanh")


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.rand(N, D, generator=gen), generator=gen), torch.randn(
        N, K, LATENT, generator=gen
    )


def _reference_log_weights(
    model: VAE, x: torch.Tensor, eps: torch.Tensor, stop_posterior: bool = False
):
    """``(z, log w)`` by ``torch.distributions``; ``stop_posterior`` holds q's parameters constant
    in ``log q``.
    """
    posterior = model.encode(x)
    mu, std = posterior.mu.unsqueeze(1), (0.5 * posterior.log_var).exp().unsqueeze(1)
    z = mu + std * eps
    if stop_posterior:
        mu, std = mu.detach(), std.detach()
    log_px = (
        Bernoulli(logits=model.decoder(z))
        .log_prob(x.unsqueeze(1).expand(-1, eps.shape[1], -1))
        .sum(-1)
    )
    return z, log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mu, std).log_prob(z).sum(-1)


def _reference_loss(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``mean_n -L_k(x_n)``."""
    _, log_w = _reference_log_weights(model, x, eps)
    return -(torch.logsumexp(log_w, dim=1) - math.log(eps.shape[1])).mean()


def _gradients(model: VAE, value: torch.Tensor) -> list[torch.Tensor]:
    """``d value / d theta`` per parameter (zeros for a parameter ``value`` does not depend on)."""
    grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, model.parameters())]


def test_the_loss_is_minus_the_bound_with_its_gradient(float64):
    model, (x, eps) = _vae(), _data()
    loss = build_iwae_loss(model, x, K, eps=eps)
    reference = _reference_loss(model, x, eps)
    torch.testing.assert_close(loss.value, reference, rtol=1e-12, atol=0)
    for ours, theirs in zip(_gradients(model, loss.value), _gradients(model, reference)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-14)
    assert [t.name for t in loss.terms] == ["likelihood", "posterior"]
    assert [t.is_likelihood for t in loss.terms] == [True, False]


def test_the_loss_equals_the_evaluation_metric_for_the_same_noise(float64):
    model, (x, _) = _vae(), _data()
    metric = iwae_log_likelihood(
        model, x, k=K, chunk_size=1000, generator=torch.Generator().manual_seed(3)
    )
    # the metric draws its noise samples-first, (k, n, latent), in one pass at this chunk size
    eps = (
        torch.randn((K, N, LATENT), generator=torch.Generator().manual_seed(3))
        .transpose(0, 1)
        .contiguous()
    )
    assert float(build_iwae_loss(model, x, K, eps=eps).value.detach()) == pytest.approx(
        -metric, rel=1e-12
    )


def test_one_sample_is_the_elbo_with_the_sampled_kl(float64):
    # L_1 = log p(x|z) - [log q(z|x) - log p(z)] (Kingma & Welling's estimator A); natgrad's ELBO
    # uses the closed-form KL (estimator B). At the same noise they differ by exactly
    # r - KL = 1/2 sum_j (2 mu sigma eps + (sigma^2 - 1)(eps^2 - 1)), which has mean zero over eps.
    model, (x, eps) = _vae(), _data()
    eps = eps[:, 0]
    iwae, elbo = build_iwae_loss(model, x, 1, eps=eps.unsqueeze(1)), build_loss(model, x, eps=eps)
    posterior = model.encode(x)
    sigma = (0.5 * posterior.log_var).exp()
    difference = (
        0.5 * (2 * posterior.mu * sigma * eps + (sigma**2 - 1) * (eps**2 - 1)).sum(1)
    ).mean()
    torch.testing.assert_close(iwae.value, elbo.value + difference, rtol=1e-12, atol=0)
    expected = [a + b for a, b in zip(_gradients(model, elbo.value), _gradients(model, difference))]
    for ours, theirs in zip(_gradients(model, iwae.value), expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-14)


def test_dreg_encoder_gradient_is_tucker_et_al_and_its_decoder_gradient_the_plain_one(float64):
    model, (x, eps) = _vae(), _data()
    dreg = build_iwae_loss(model, x, K, "dreg", eps=eps)
    plain = build_iwae_loss(model, x, K, "plain", eps=eps)
    assert float(dreg.value.detach()) == pytest.approx(float(plain.value.detach()), rel=1e-14)
    ours = dict(zip((n for n, _ in model.named_parameters()), _gradients(model, dreg.value)))
    plain_grads = dict(
        zip((n for n, _ in model.named_parameters()), _gradients(model, plain.value))
    )
    # Tucker et al. (2019): grad_phi = -(1/N) sum_{n,i} w~_i^2 (d log w_i / d z_i) (d z_i / d phi),
    # q's parameters held constant inside log w_i; derivative in z by autograd on a detached copy of
    # z.
    z, _ = _reference_log_weights(model, x, eps)
    leaf = z.detach().requires_grad_(True)
    posterior = model.encode(x)
    mu, std = (
        posterior.mu.detach().unsqueeze(1),
        (0.5 * posterior.log_var).exp().detach().unsqueeze(1),
    )
    log_w = (
        Bernoulli(logits=model.decoder(leaf)).log_prob(x.unsqueeze(1).expand(-1, K, -1)).sum(-1)
        + Normal(0.0, 1.0).log_prob(leaf).sum(-1)
        - Normal(mu, std).log_prob(leaf).sum(-1)
    )
    (score,) = torch.autograd.grad(log_w.sum(), leaf)
    weights = torch.softmax(log_w.detach(), dim=1)
    encoder = dict(model.encoder.named_parameters())
    tucker = torch.autograd.grad(
        z, list(encoder.values()), grad_outputs=-(weights**2).unsqueeze(-1) * score / N
    )
    for (name, _), expected in zip(encoder.items(), tucker):
        torch.testing.assert_close(ours[f"encoder.{name}"], expected, rtol=1e-10, atol=1e-14)
    for name, _ in model.decoder.named_parameters():
        torch.testing.assert_close(
            ours[f"decoder.{name}"], plain_grads[f"decoder.{name}"], rtol=1e-12, atol=1e-15
        )
    assert any(
        not torch.allclose(ours[n], plain_grads[n]) for n in (f"encoder.{m}" for m in encoder)
    )


def test_a_dreg_loss_re_evaluates_as_the_plain_bound(float64):
    model, (x, eps) = _vae(), _data()
    dreg, plain = (
        build_iwae_loss(model, x, K, "dreg", eps=eps),
        build_iwae_loss(model, x, K, eps=eps),
    )
    rebuilt = dreg.rebuild()
    for a, b in zip(_gradients(model, rebuilt.value), _gradients(model, plain.value)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(dreg.terms, plain.terms):
        for c, d in zip(a.curvature, b.curvature):
            torch.testing.assert_close(c, d, rtol=1e-14, atol=0)


def test_sampled_output_gradients_have_the_weighted_curvature_as_covariance(float64):
    # E[s s^T] = w~_i H_i per sample (diagonal): 4000 draws, standard error < 1% of the largest
    # entry.
    model, (x, eps) = _vae(), _data()
    term = build_iwae_loss(model, x, K, eps=eps).terms[0]
    gen = torch.Generator().manual_seed(5)
    second_moment = sum(term.sample_output_gradient(gen)[0] ** 2 for _ in range(4000)) / 4000
    curvature = term.curvature[0]
    assert float((second_moment - curvature).abs().max()) < 0.04 * float(curvature.max())
    weights = (
        curvature
        / torch.sigmoid(term.outputs[0].detach())
        / (1 - torch.sigmoid(term.outputs[0].detach()))
    )
    # w~ sums to 1 per example
    torch.testing.assert_close(weights.sum(1), torch.ones(N, D), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "model, kwargs, error, match",
    [
        (DeepAutoencoder((D, 4, 2), init="default"), {}, TypeError, "needs a VAE.*DeepAutoencoder"),
        (None, {"samples": 0}, ValueError, "Invalid samples: 0; allowed: an integer >= 1"),
        (
            None,
            {"estimator": "reinforce"},
            ValueError,
            r"Invalid estimator: 'reinforce'; allowed: plain, dreg",
        ),
        (None, {"eps": torch.zeros(N, LATENT)}, ValueError, r"eps must have shape \(5, 4, 3\)"),
    ],
)
def test_bad_input_is_refused_naming_the_culprit(model, kwargs, error, match):
    model = model or _vae()
    x = torch.rand(N, D)
    with pytest.raises(error, match=match):
        build_iwae_loss(model, x, **{"samples": K, **kwargs})
