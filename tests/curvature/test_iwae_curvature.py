r"""The curvature of the importance-weighted bound (natgrad.iwae): the matrix

    C = (1/N) sum_n [ sum_i w~_{n,i} J_{n,i}^T H_{n,i} J_{n,i} + J_enc,n^T diag(1, sigma^2/2)
    J_enc,n ],

checked against an independent dense torch.func computation, against natgrad's full VAE GGN at
k = 1, and through every representation that reads the loss terms' curvature.
"""

from __future__ import annotations

import pytest
import torch
from curvature_cases import flat, random_vectors, relative_error
from torch.distributions import Bernoulli, Normal
from torch.func import functional_call, jacrev

from natgrad.curvature import BlockDiagonalKFAC, CurvatureConfig, DiagonalCurvature, exact
from natgrad.iwae import build_iwae_loss
from natgrad.losses import build_loss
from natgrad.models import VAE
from natgrad.optim.quadratic_model import ggn_gram

N, D, LATENT = 3, 5, 2
# different torch.func paths over the same float64 maths (as tests/curvature/test_exact.py)
RTOL = 1e-10


def _problem(k: int, n: int = N):
    torch.manual_seed(7)
    model = VAE((D, 4, LATENT), activation="tanh")
    gen = torch.Generator().manual_seed(8)
    x = torch.bernoulli(torch.rand(n, D, generator=gen), generator=gen)
    return model, x, torch.randn(n, k, LATENT, generator=gen)


def _reference_matrix(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """C from the encoder and decoder alone: jacrev of (logits, mu, v), weights by
    torch.distributions.
    """
    params = {name: p.detach() for name, p in model.named_parameters()}

    def outputs(p):
        head = functional_call(
            model.encoder, {k[8:]: v for k, v in p.items() if k.startswith("encoder.")}, (x,)
        )
        mu, log_var = head.chunk(2, dim=-1)
        z = mu.unsqueeze(1) + (0.5 * log_var).exp().unsqueeze(1) * eps
        logits = functional_call(
            model.decoder, {k[8:]: v for k, v in p.items() if k.startswith("decoder.")}, (z,)
        )
        return logits, mu, log_var, z

    logits, mu, log_var, z = outputs(params)
    std = (0.5 * log_var).exp().unsqueeze(1)
    log_w = (
        Bernoulli(logits=logits).log_prob(x.unsqueeze(1).expand_as(logits)).sum(-1)
        + Normal(0.0, 1.0).log_prob(z).sum(-1)
        - Normal(mu.unsqueeze(1), std).log_prob(z).sum(-1)
    )
    weights = torch.softmax(log_w, dim=1)
    p = torch.sigmoid(logits)
    metrics = (weights.unsqueeze(-1) * p * (1 - p), torch.ones_like(mu), 0.5 * log_var.exp())
    jacobians = jacrev(lambda q: outputs(q)[:3])(params)
    total = 0
    for jacobian, metric in zip(jacobians, metrics):
        # (outputs, P)
        j = torch.cat([block.reshape(metric.numel(), -1) for block in jacobian.values()], dim=1)
        total = total + j.T @ (metric.reshape(-1, 1) * j)
    return total / x.shape[0]


def _refreshed(representation, loss):
    representation.update(representation.capture(loss, torch.Generator().manual_seed(0)))
    representation.refresh()
    return representation


@pytest.mark.parametrize("k", [1, 4])
def test_dense_matrix_equals_an_independent_torch_func_computation(float64, k):
    model, x, eps = _problem(k)
    loss = build_iwae_loss(model, x, k, eps=eps)
    assert relative_error(exact.dense_ggn(loss), _reference_matrix(model, x, eps)) < RTOL


def test_at_one_sample_it_is_the_full_vae_ggn(float64):
    model, x, eps = _problem(1)
    iwae, elbo = build_iwae_loss(model, x, 1, eps=eps), build_loss(model, x, eps=eps[:, 0])
    for kind in ("full", "decoder-only"):
        assert (
            relative_error(exact.dense_ggn(iwae, kind=kind), exact.dense_ggn(elbo, kind=kind))
            < 1e-13
        )


@pytest.mark.parametrize("estimator", ["plain", "dreg"])
def test_products_and_the_quadratic_model_use_the_same_matrix(float64, estimator):
    model, x, eps = _problem(4)
    loss = build_iwae_loss(model, x, 4, estimator, eps=eps)
    dense = exact.dense_ggn(loss)
    u, v = random_vectors(loss, 0), random_vectors(loss, 1)
    assert relative_error(flat(exact.ggn_vector_product(loss, v)), dense @ flat(v)) < RTOL
    gram = ggn_gram(loss, [u, v])
    expected = torch.stack([flat(u), flat(v)]) @ dense @ torch.stack([flat(u), flat(v)]).T
    assert relative_error(gram, expected) < RTOL


@pytest.mark.parametrize("kind", ["full", "decoder-only", "empirical"])
def test_the_exact_diagonal_is_the_diagonal_of_the_dense_matrix(float64, kind):
    """Square-root statistics of w~_i H_i (or the loss gradient, 'empirical') make the diagonal
    exact.
    """
    model, x, eps = _problem(4)
    loss = build_iwae_loss(model, x, 4, eps=eps)
    diagonal = _refreshed(
        DiagonalCurvature(model, CurvatureConfig(kind=kind, estimator="square-root")), loss
    )
    assert (
        relative_error(
            diagonal.to_dense().diagonal(), exact.dense_curvature(loss, kind=kind).diagonal()
        )
        < 1e-12
    )


def test_the_empirical_fisher_is_built_from_the_per_example_gradients_of_the_bound(float64):
    model, x, eps = _problem(4)
    loss = build_iwae_loss(model, x, 4, eps=eps)
    rows = []
    for n in range(N):  # the independent oracle: -L_k of one example by its own forward pass
        one = build_iwae_loss(model, x[n : n + 1], 4, eps=eps[n : n + 1])
        rows.append(flat(torch.autograd.grad(one.value, list(model.parameters()))))
    grads = torch.stack(rows)
    assert relative_error(exact.dense_empirical_fisher(loss), grads.T @ grads / N) < RTOL


def test_kfac_is_exact_where_its_regime_says_so(float64):
    """One example, square-root statistics: every block is exact at k = 1; at k = 4 the encoder's
    blocks (one location each) are, while the decoder's see the k samples as k locations (KFC's
    approximation).
    """
    for k in (1, 4):
        model, x, eps = _problem(k, n=1)
        loss = build_iwae_loss(model, x, k, eps=eps)
        kfac = _refreshed(BlockDiagonalKFAC(model, CurvatureConfig(estimator="square-root")), loss)
        dense = exact.dense_ggn(loss)
        for layer in kfac.layout.layers:
            idx = kfac.layout.layer_indices(layer)
            error = relative_error(
                kfac.to_dense()[idx.unsqueeze(1), idx], dense[idx.unsqueeze(1), idx]
            )
            if k == 1 or layer.name.startswith("encoder"):
                assert error < 1e-12, layer.name
            else:
                assert error > 1e-3, layer.name  # the sample-as-location approximation is not exact
