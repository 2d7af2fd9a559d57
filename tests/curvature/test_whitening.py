"""PRONG's whitened layers: function preservation, whitening, and the K-FAC (A factor only) regime.

float64 throughout; tolerances 1e-10 (relative to the magnitudes compared) cover the round-off of
an ``eigh`` of <= 6x6 covariances whose smallest regularised eigenvalue is >= epsilon = 1e-3
(condition number <= ~1e4), far below any modelling error these tests are meant to catch.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from natgrad.curvature.capture import capture
from natgrad.curvature.kfac import input_factor
from natgrad.curvature.layout import ParameterLayout
from natgrad.curvature.whitening import (
    WhitenedLinear,
    capture_layer_inputs,
    reparametrise_all,
    whiten,
    whitening_statistics,
)
from natgrad.losses import build_loss
from natgrad.models import VAE, DeepAutoencoder

EPSILON = 1e-3
N = 40


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return VAE((6, 5, 2)) if kind == "vae" else DeepAutoencoder((6, 4, 2), init="default")


def _data(kind: str, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(N, 6, generator=gen)
    eps = torch.randn(N, 2, generator=gen) if kind == "vae" else None
    return x, eps


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item())


def _reestimate(model: nn.Module, layers, x, eps) -> None:
    with capture_layer_inputs(layers) as records:
        build_loss(model, x, eps=eps)
    reparametrise_all(layers, [r[0] for r in records], EPSILON)


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["prong", "prong+"])
def test_reestimation_preserves_outputs(float64, kind, batch_norm):
    model = _model(kind)
    layers = whiten(model, batch_norm=batch_norm)
    x, eps = _data(kind)
    _reestimate(model, layers, x, eps)  # move away from U = I, c = 0 first
    x2, eps2 = _data(kind, seed=2)  # new statistics from another sample
    with capture_layer_inputs(layers) as records:
        before = build_loss(model, x2, eps=eps2).per_example
    model.eval()
    before_eval = build_loss(model, x, eps=eps).per_example
    reparametrise_all(layers, [r[0] for r in records], EPSILON)
    after_eval = build_loss(
        model, x, eps=eps
    ).per_example  # before a training pass moves running stats
    model.train()
    after = build_loss(model, x2, eps=eps2).per_example
    assert not torch.equal(layers[0].centre, torch.zeros_like(layers[0].centre))
    _close(after, before)
    _close(after_eval, before_eval)


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
def test_whitened_inputs_have_identity_covariance_up_to_epsilon(float64, kind):
    """On the estimation sample: mean 0 and covariance U Sigma U^T = diag(d_j / (d_j + epsilon))."""
    model = _model(kind)
    layers = whiten(model)
    x, eps = _data(kind)
    with capture_layer_inputs(layers) as records:
        build_loss(model, x, eps=eps)
    reparametrise_all(layers, [r[0] for r in records], EPSILON)
    for layer, (h,) in zip(layers, records):
        white = (h - layer.centre) @ layer.whitening.T
        centred = h - h.mean(dim=0)
        eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / N)  # ascending, as U's rows
        _close(white.mean(dim=0), torch.zeros(h.shape[1]))
        _close(white.T @ white / N, torch.diag(eigenvalues / (eigenvalues + EPSILON)))


def test_sgd_on_whitened_parameters_is_kfac_with_input_factor_only(float64):
    r"""The exact regime: PRONG's SGD step on (V, d), mapped back to (W, b), equals K-FAC with G =
    I.

    Condition: the whitening statistics (c, Sigma) come from the same sample as K-FAC's input
    factor A = mean(a_bar a_bar^T), a_bar = [a; 1]. Then for every layer
        [W', b'] = [W, b] - lr [grad_W, grad_b] (A + epsilon diag(1, ..., 1, 0))^{-1},
    since A + epsilon diag(I, 0) = [[Sigma + eps I + c c^T, c], [c^T, 1]] and U^T U = (Sigma + eps
    I)^{-1}.
    """
    lr = 0.3
    plain = _model("autoencoder")
    model = copy.deepcopy(plain)
    layers = whiten(model)
    x, _ = _data("autoencoder")
    _reestimate(model, layers, x, None)

    layout = ParameterLayout(plain)
    loss = build_loss(plain, x)
    grads = torch.autograd.grad(loss.value, layout.params)
    records = capture(layout, loss).layers

    whitened_loss = build_loss(model, x).value
    params = [p for layer in layers for p in (layer.weight, layer.bias)]
    whitened_grads = torch.autograd.grad(whitened_loss, params)
    with torch.no_grad():
        for p, g in zip(params, whitened_grads):
            p -= lr * g
    for layer, kronecker, record in zip(layers, layout.layers, records):
        a_factor = input_factor(record, N)  # (d_in + 1, d_in + 1)
        damping = EPSILON * torch.diag(torch.cat([torch.ones(kronecker.d_in - 1), torch.zeros(1)]))
        w_bar = layout.layer_matrix(layout.params, kronecker).detach()
        g_bar = layout.layer_matrix(grads, kronecker)
        expected = w_bar - lr * g_bar @ torch.linalg.inv(a_factor + damping)
        weight, bias = layer.canonical()
        _close(torch.cat([weight, bias.unsqueeze(1)], dim=1), expected)


def test_whiten_replaces_every_linear_and_normalises_hidden_layers_only():
    model = DeepAutoencoder((6, 4, 2), init="default")
    layers = whiten(model, batch_norm=True)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert [layer.batch_norm for layer in layers] == [True, False, True, False]
    assert all(isinstance(m, WhitenedLinear) for m in (model.encoder[0], model.decoder[2]))


def test_whitening_statistics_validation():
    with pytest.raises(ValueError, match="Invalid whitening epsilon: .*; allowed: a number > 0"):
        whitening_statistics(torch.randn(5, 3), 0.0)
    with pytest.raises(ValueError, match="N_s >= 2"):
        whitening_statistics(torch.randn(1, 3), 1e-3)
