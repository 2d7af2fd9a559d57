"""A forward that draws its own noise: every re-evaluation replays the loss's noise, exactly.

The oracle is the same network given that noise as an input (the form natgrad's own VAE uses).
"""

from __future__ import annotations

import torch
from curvature_cases import flat, random_vectors, relative_error
from torch import Tensor, nn
from torch.func import functional_call, grad

from natgrad.curvature import BlockDiagonalKFAC, CurvatureConfig, exact
from natgrad.distributions import Bernoulli, DiagonalGaussianPosterior
from natgrad.losses import Loss, kl_term, likelihood_term
from natgrad.optim import KFAC as KFACOptimizer
from natgrad.optim.quadratic_model import ggn_gram


class VAEWithNoiseInput(nn.Module):
    """Encoder Linear -> (mu, log sigma^2); ``z = mu + sigma eps``; decoder Linear -> LayerNorm ->
    Linear.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(5, 4)
        self.decoder = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Tanh(), nn.Linear(3, 5))

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return self.decode(mu, log_var, eps)

    def decode(self, mu: Tensor, log_var: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.decoder(mu + torch.exp(0.5 * log_var) * eps), mu, log_var


class VAEDrawingNoise(VAEWithNoiseInput):
    """The same network written the usual way: the noise is drawn in ``forward``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return self.decode(mu, log_var, torch.randn_like(mu))


def elbo_terms(out, batch):
    logits, mu, log_var = out
    return likelihood_term(Bernoulli(logits), batch[0]), kl_term(
        DiagonalGaussianPosterior(mu, log_var)
    )


def pair(n: int = 4) -> tuple[Loss, Loss]:
    """The noisy VAE's loss and the same network's loss with the noise it drew passed explicitly."""
    torch.manual_seed(31)
    noisy = VAEDrawingNoise()
    x = torch.rand(n, 5)
    loss = Loss.from_model(noisy, (x,), elbo_terms)
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(loss.random_state)
        eps = torch.randn(n, 2)
    explicit = VAEWithNoiseInput()
    explicit.load_state_dict(noisy.state_dict())
    return loss, Loss.from_model(explicit, (x, eps), elbo_terms)


def test_loss_records_the_noise_and_re_evaluation_replays_it(float64):
    loss, reference = pair()
    assert loss.random_state is not None and reference.random_state is None
    torch.testing.assert_close(loss.value, reference.value, rtol=1e-14, atol=0)
    params = exact.detached_parameters(loss)
    torch.testing.assert_close(loss.value_at(params), reference.value.detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(loss.rebuild().value, reference.value, rtol=1e-14, atol=0)


def test_exact_ggn_products_and_gram_use_the_loss_noise(float64):
    loss, reference = pair()
    dense = exact.dense_ggn(reference)
    assert relative_error(exact.dense_ggn(loss), dense) < 1e-12
    v, u = random_vectors(loss), random_vectors(loss, seed=1)
    assert relative_error(flat(exact.ggn_vector_product(loss, v)), dense @ flat(v)) < 1e-12
    torch.testing.assert_close(
        ggn_gram(loss, [v, u]), ggn_gram(reference, [v, u]), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        exact.per_example_gradients(loss),
        exact.per_example_gradients(reference),
        rtol=1e-12,
        atol=1e-14,
    )


def test_kfac_statistics_use_the_loss_noise(float64):
    """Square-root statistics, Kronecker layers and the LayerNorm's per-example diagonal alike."""
    loss, reference = pair()
    dense = []
    for each in (loss, reference):
        rep = BlockDiagonalKFAC(each.model, CurvatureConfig(estimator="square-root"))
        rep.update(rep.capture(each))
        rep.refresh()
        dense.append(rep.to_dense())
    assert relative_error(dense[0], dense[1]) < 1e-12


def test_kfac_step_equals_the_step_with_explicit_noise(float64):
    loss, reference = pair(n=8)
    steps = []
    for each in (loss, reference):
        optimizer = KFACOptimizer(each.model, damping=1.0, schedule={"statistics_fraction": 1.0})

        def closure(each=each):
            optimizer.zero_grad()
            fresh = each.rebuild()
            fresh.value.backward()
            return fresh

        optimizer.step(closure)
        steps.append(torch.cat([p.detach().reshape(-1) for p in each.model.parameters()]))
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-10, atol=1e-12)


def test_dropout_mask_is_replayed(float64):
    """The gradient of the re-evaluated loss is the back-propagated one: the same Dropout mask."""
    torch.manual_seed(32)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 4))
    x = torch.rand(5, 4)
    loss = Loss.from_model(
        model, (x,), lambda out, batch: (likelihood_term(Bernoulli(out), batch[0]),)
    )
    loss.value.backward()
    functional = grad(loss.value_at)(exact.detached_parameters(loss))
    for name, p in model.named_parameters():
        torch.testing.assert_close(functional[name], p.grad, rtol=1e-13, atol=1e-15)
    replayed = functional_call(model, exact.detached_parameters(loss), (x,))
    assert not torch.equal(replayed, loss.evaluate(exact.detached_parameters(loss))[0].outputs[0])
