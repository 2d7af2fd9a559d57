"""TONGA's low-rank block representation against the dense matrices it stands for (float64).

Tolerances: every comparison is between two exact float64 computations of the same quantity (a
handful of matrix products or one ``eigh``/``solve`` of matrices of size <= 60 with condition
number <= ~1e4 at gamma^2 = 0.1), so 1e-10 relative error leaves several orders of margin.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from natgrad.curvature.exact import dense_empirical_fisher, per_example_gradients
from natgrad.curvature.tonga import Blocks, ExampleGradients, TongaConfig, TongaCurvature
from natgrad.losses import build_loss
from natgrad.models import VAE, DeepAutoencoder

BATCH = 6


def _tiny(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "vae":
        return VAE((5, 4, 2))
    return DeepAutoencoder((5, 3, 2), init="default")


def _loss(model: nn.Module, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, 5, generator=gen).round()
    return build_loss(model, x, generator=gen)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-10) -> None:
    assert (a - b).abs().max() <= rtol * max(1.0, b.abs().max().item())


def _flat(vectors) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in vectors])


def _block_mask(rep: TongaCurvature) -> torch.Tensor:
    """Boolean (P, P) mask of the block structure, from the layout (independent of the factors)."""
    n = rep.layout.dimension
    mask = torch.zeros(n, n, dtype=torch.bool)
    positions = rep.layout.unflatten(torch.arange(n))
    for group in rep.groups:
        index = group.gather(positions)
        for row in index:
            mask[row.unsqueeze(1), row.unsqueeze(0)] = True
    return mask


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
@pytest.mark.parametrize("blocks", list(Blocks))
def test_full_rank_uncentred_equals_empirical_fisher_blocks(float64, kind, blocks):
    """Rank >= number of examples: C is exactly the block-diagonal part of the empirical Fisher."""
    model = _tiny(kind)
    loss = _loss(model)
    rep = TongaCurvature(model, TongaConfig(rank=BATCH, blocks=blocks, examples_per_update=BATCH))
    rep.update(rep.capture(loss))
    rep.refresh()  # truncation to rank = #examples keeps everything
    expected = dense_empirical_fisher(loss)
    mask = _block_mask(rep)
    if blocks == "none":
        assert mask.all()
    _close(rep.to_dense(), expected * mask)


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
def test_full_rank_centred_equals_gradient_covariance(float64, kind):
    """Centred variant: C = (1/N) sum_n (g_n - g_bar)(g_n - g_bar)^T, the paper's covariance."""
    model = _tiny(kind)
    loss = _loss(model)
    rep = TongaCurvature(
        model, TongaConfig(rank=BATCH, blocks="none", centred=True, examples_per_update=BATCH)
    )
    rep.update(rep.capture(loss))
    g = per_example_gradients(loss)
    mean = g.mean(dim=0)
    covariance = dense_empirical_fisher(loss) - torch.outer(mean, mean)
    _close(rep.to_dense(), covariance)


def test_discounted_updates_match_moving_average_and_truncation_keeps_top_eigenpairs(float64):
    """Three updates, C = sum of discounted batch matrices; then the rank-k truncation = top-k of
    it.
    """
    model = _tiny("autoencoder")
    gamma = 0.7
    rep = TongaCurvature(
        model, TongaConfig(rank=2, discount=gamma, blocks="none", examples_per_update=3)
    )
    expected = None
    for step in range(1, 4):
        loss = _loss(model, seed=step)
        rep.update(rep.capture(loss))
        sub = build_loss(model, loss.inputs[0][:3])
        batch = dense_empirical_fisher(sub)
        w = min(1.0 - 1.0 / step, gamma)
        expected = batch if expected is None else w * expected + (1 - w) * batch
    assert rep.ranks == [9]
    _close(rep.to_dense(), expected)
    rep.refresh()
    assert rep.ranks == [2]
    eigenvalues, vectors = torch.linalg.eigh(expected)
    top = vectors[:, -2:] * eigenvalues[-2:]
    _close(rep.to_dense(), top @ vectors[:, -2:].T)


@pytest.mark.parametrize("blocks", list(Blocks))
def test_solve_and_matvec_equal_dense(float64, blocks):
    """Woodbury solve == dense solve of (C + lambda I); matvec == dense C @ v (low rank: k <
    examples).
    """
    model = _tiny("vae")
    rep = TongaCurvature(model, TongaConfig(rank=2, blocks=blocks, examples_per_update=4))
    for seed in (1, 2, 3):  # a truncation, then pending columns on top of the rank-2 factor
        rep.update(rep.capture(_loss(model, seed)))
        if seed == 2:
            rep.refresh()
    assert all(r == 6 for r in rep.ranks)
    torch.manual_seed(5)
    v = [torch.randn_like(p) for p in rep.params]
    dense = rep.to_dense()
    tikhonov = 0.1
    _close(_flat(rep.solve(v, tikhonov)), torch.linalg.solve(rep.to_dense(tikhonov), _flat(v)))
    _close(rep.to_dense(tikhonov), dense + tikhonov * torch.eye(len(dense)))
    _close(_flat(rep.matvec(v)), dense @ _flat(v))


def test_uses_first_examples_per_update_and_state_round_trip(float64):
    model = _tiny("autoencoder")
    config = TongaConfig(rank=3, blocks="unit", examples_per_update=2)
    rep = TongaCurvature(model, config)
    grads = rep.capture(_loss(model))
    assert all(g.shape[0] == 2 for g in grads.gradients)
    rep.update(grads)
    rep.update(rep.capture(_loss(model, seed=3)))
    rep.refresh()
    copy = TongaCurvature(model, config)
    copy.load_state_dict(rep.state_dict())
    for r in (rep, copy):
        r.update(r.capture(_loss(model, seed=7)))
    v = [torch.ones_like(p) for p in rep.params]
    assert torch.equal(_flat(rep.solve(v, 0.3)), _flat(copy.solve(v, 0.3)))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rank", 0, "Invalid tonga.rank: 0"),
        ("examples_per_update", 1.5, "Invalid tonga.examples_per_update: 1.5"),
        ("discount", 1.0, "Invalid tonga.discount: 1.0"),
        ("blocks", "row", "Invalid tonga.blocks: 'row'; allowed: unit, layer, none"),
        ("centred", "yes", "Invalid tonga.centred: 'yes'"),
    ],
)
def test_invalid_config_names_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TongaConfig(**{field: value})


def test_zero_tikhonov_rejected(float64):
    rep = TongaCurvature(_tiny("autoencoder"))
    with pytest.raises(ValueError, match="tikhonov: 0.0; allowed: a number > 0"):
        rep.solve([torch.zeros_like(p) for p in rep.params], 0.0)


def test_refresh_is_finite_on_nearly_dead_units():
    """float32 factor whose Gram has entries down to ~1e-40 (a unit that barely moves), as met on
    the
    MNIST autoencoder: float32 LAPACK eigh returns NaN or fails on this Gram (seed 22 of this
    construction), so refresh decomposes in float64. The result must equal the top-k eigen-part of
    X X^T; tolerance 1e-5 relative to its largest entry (float32 storage of the factor).
    """
    gen = torch.Generator().manual_seed(22)
    columns = torch.zeros(31, 50)
    columns[:, :10] = torch.randn(31, 10, generator=gen) * torch.logspace(-4, -9.5, 10)
    columns[:, [31, 34, 38, 39, 45]] = torch.randn(31, 5, generator=gen) * 1e-8
    layer = nn.Linear(30, 1)
    rep = TongaCurvature(layer, TongaConfig(rank=4, blocks="unit", examples_per_update=50))
    gradients = columns.T * 50**0.5  # the first update stores g_n / sqrt(m) as column n
    rep.update(
        ExampleGradients((gradients[:, :30].reshape(50, 1, 30), gradients[:, 30].reshape(50, 1)))
    )
    rep.refresh()
    assert all(bool(torch.isfinite(x).all()) for x in rep.factors)
    exact = columns.double() @ columns.double().T
    eigenvalues, vectors = torch.linalg.eigh(exact)
    top = (vectors[:, -4:] * eigenvalues[-4:]) @ vectors[:, -4:].T
    scale = top.abs().max()
    assert (rep.to_dense().double() - top).abs().max() <= 1e-5 * scale
