"""Capture: layer inputs, the terms whose output gradients are back-propagated, and misuse."""

from __future__ import annotations

import math

import pytest
import torch
from curvature_cases import bernoulli_terms, build, relative_error
from torch import nn
from torch.nn import functional as F

from natgrad.curvature import CurvatureKind, OutputGradientEstimator, ParameterLayout, capture
from natgrad.curvature.kfac import input_factor, output_factor
from natgrad.losses import Loss, kl_term

EXACT = OutputGradientEstimator.SQUARE_ROOT


def head_index(layout: ParameterLayout) -> int:
    """The encoder's last Linear, whose output is (mu, log sigma^2)."""
    return max(i for i, layer in enumerate(layout.layers) if layer.name.startswith("encoder."))


def test_conv_inputs_are_unfolded_patches_with_ones(float64):
    loss = build("conv_net")
    layout = ParameterLayout(loss.model)
    record = capture(layout, loss, estimator=EXACT).layers[0]
    x = loss.inputs[0]
    assert record.inputs.shape == (3, 25, 10)  # 5x5 locations, 1*3*3 patch + bias
    # location (row 2, col 3): the 3x3 neighbourhood of the zero-padded image, then 1
    padded = F.pad(x, (1, 1, 1, 1))
    patch = padded[:, 0, 2:5, 3:6].reshape(3, 9)
    torch.testing.assert_close(record.inputs[:, 2 * 5 + 3, :9], patch, rtol=0, atol=0)
    assert (record.inputs[..., 9] == 1).all()
    # KFC estimators: A sums over locations, G averages over them
    a = record.inputs.flatten(0, 1)
    torch.testing.assert_close(input_factor(record, 3), a.T @ a / 3, rtol=1e-14, atol=0)
    g = record.output_grads.flatten(0, 2)
    torch.testing.assert_close(output_factor(record, 3), g.T @ g / (3 * 25), rtol=1e-14, atol=0)


def test_full_adds_the_kl_term_to_the_encoder_head(float64):
    """The head outputs (mu, log sigma^2) directly, so G_full - G_decoder-only = mean_n diag(1,
    sigma^2/2).
    """
    loss = build("vae")
    layout = ParameterLayout(loss.model)
    i = head_index(layout)
    full = output_factor(
        capture(layout, loss, CurvatureKind.FULL, EXACT).layers[i], loss.batch_size
    )
    decoder = output_factor(
        capture(layout, loss, CurvatureKind.DECODER_ONLY, EXACT).layers[i], loss.batch_size
    )
    kl_curvature = torch.cat(loss.terms[1].curvature, dim=1).mean(0)
    torch.testing.assert_close(full - decoder, torch.diag(kl_curvature), rtol=1e-12, atol=1e-14)


def test_sampled_full_statistics_back_propagate_every_term(float64):
    """One VAE example repeated S = 4000 times: the mean of the sampled per-example head ``g g^T``
    converges to the exact 'full' head G factor, every entry within 5 standard errors; the KL
    curvature that 'decoder-only' would miss is far larger than that tolerance.
    """
    vae = build("vae")
    one = Loss.from_model(vae.model, tuple(x[:1] for x in vae.inputs), vae.build_terms)
    many = Loss.from_model(
        vae.model, tuple(x[:1].expand(4000, -1) for x in vae.inputs), vae.build_terms
    )
    layout = ParameterLayout(vae.model)
    i = head_index(layout)
    exact_g = output_factor(capture(layout, one, CurvatureKind.FULL, EXACT).layers[i], 1)
    g = (
        capture(layout, many, generator=torch.Generator().manual_seed(0))
        .layers[i]
        .output_grads[0, :, 0]
    )
    outer = g.unsqueeze(2) * g.unsqueeze(1)  # (S, 4, 4)
    standard_error = outer.std(0) / math.sqrt(g.shape[0])
    assert ((outer.mean(0) - exact_g).abs() <= 5 * standard_error).all()
    kl = torch.cat(one.terms[1].curvature, dim=1)[0]
    assert (kl > 10 * standard_error.diagonal()).all()


def test_layer_called_twice_is_rejected(float64):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(torch.tanh(self.fc(x)))

    loss = Loss.from_model(Twice(), (torch.rand(2, 3),), bernoulli_terms)
    with pytest.raises(RuntimeError, match="'fc' was called twice"):
        capture(ParameterLayout(loss.model), loss)


def test_decoder_only_needs_a_likelihood_term(float64):
    loss = build("vae")
    kl_only = Loss.from_model(
        loss.model, loss.inputs, lambda out, inputs: (kl_term(out.posterior),)
    )
    with pytest.raises(
        ValueError, match="'decoder-only' needs a likelihood term; the loss has terms \\['kl'\\]"
    ):
        capture(ParameterLayout(loss.model), kl_only, CurvatureKind.DECODER_ONLY)


def test_layout_splits_kronecker_and_other_parameters():
    layout = ParameterLayout(build("norm_net").model)
    assert [layer.name for layer in layout.layers] == ["fc1", "fc2"]
    assert [layout.names[i] for i in layout.other] == ["norm.weight", "norm.bias"]
    assert (
        relative_error(
            torch.tensor(float(layout.dimension)), torch.tensor(4 * 3 + 3 + 3 + 3 + 3 * 4 + 4.0)
        )
        == 0
    )
