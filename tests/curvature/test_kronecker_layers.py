"""Kronecker blocks of Conv1d and ConvTranspose2d, the block table, and the models capture
refuses.
"""

from __future__ import annotations

import pytest
import torch
from curvature_cases import bernoulli_terms, relative_error
from torch import nn
from torch.nn import functional as F

from natgrad.curvature import BlockDiagonalKFAC, CurvatureConfig, ParameterLayout, exact
from natgrad.distributions import Bernoulli
from natgrad.losses import Loss, likelihood_term


def target_terms(out: torch.Tensor, batch: tuple[torch.Tensor, ...]):
    return (likelihood_term(Bernoulli(out), batch[-1]),)


def refreshed_exact(loss: Loss) -> BlockDiagonalKFAC:
    rep = BlockDiagonalKFAC(loss.model, CurvatureConfig(estimator="square-root"))
    rep.update(rep.capture(loss))
    rep.refresh()
    return rep


def one_location(layer: nn.Module, input_shape: tuple[int, ...]) -> Loss:
    """One example whose input gives the layer exactly one location: K-FAC's exact regime."""
    torch.manual_seed(21)
    model = nn.Sequential(layer, nn.Flatten())
    x = torch.randn(1, *input_shape)
    d = model(x).shape[1]
    return Loss.from_model(model, (x,), target_terms, targets=(torch.rand(1, d),))


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (nn.Conv1d(2, 3, 3), (2, 3)),
        (nn.ConvTranspose2d(2, 3, 2, stride=2, bias=False), (2, 1, 1)),
    ],
)
def test_one_location_one_example_exact_roots_is_exact_ggn(float64, layer, input_shape):
    loss = one_location(layer.double(), input_shape)
    rep = refreshed_exact(loss)
    assert [type(layer.module) for layer in rep.layout.layers] == [type(layer)]
    assert relative_error(rep.to_dense(), exact.dense_ggn(loss)) < 1e-12


def test_transposed_conv_weight_block_is_exact_and_its_bias_diagonal(float64):
    loss = one_location(nn.ConvTranspose2d(2, 3, 2).double(), (2, 1, 1))
    rep, dense = refreshed_exact(loss), exact.dense_ggn(loss)
    weight = rep.layout.layer_indices(rep.layout.layers[0])
    assert relative_error(rep.to_dense()[weight][:, weight], dense[weight][:, weight]) < 1e-12
    bias = rep.layout.other_indices()
    assert relative_error(rep.to_dense()[bias, bias], dense[bias, bias]) < 1e-12


def test_transposed_conv_layer_matrix_round_trips_and_matches_indices(float64):
    layout = ParameterLayout(nn.ConvTranspose2d(2, 3, (2, 3), stride=2))
    layer = layout.layers[0]
    v = [torch.randn(p.shape) for p in layout.params]
    matrix = layout.layer_matrix(v, layer)
    assert matrix.shape == (layer.d_out, layer.d_in) == (3 * 2 * 3, 2)
    assert torch.equal(layout.flatten(v)[layout.layer_indices(layer)], matrix.reshape(-1))
    out = list(v)
    layout.scatter_layer_matrix(matrix, layer, out)
    assert torch.equal(out[0], v[0])


def test_transposed_conv_patches_are_the_gradient_of_the_weight(float64):
    """sum_t g_t a_t^T over locations is dL/dW_bar for a multi-location transposed convolution."""
    torch.manual_seed(22)
    conv = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, bias=False).double()
    x = torch.randn(2, 2, 3, 4)
    y = conv(x)
    g = torch.randn_like(y)
    (dw,) = torch.autograd.grad((y * g).sum(), [conv.weight])
    layout = ParameterLayout(conv)
    layer = layout.layers[0]
    estimate = torch.einsum("nto,nti->oi", layer.output_gradients(g), layer.inputs(x))
    torch.testing.assert_close(estimate, layout.layer_matrix([dw], layer), rtol=1e-12, atol=1e-12)


def test_describe_lists_every_parameter_and_why_it_is_diagonal():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, groups=2),
        nn.Conv1d(4, 4, 1, padding_mode="reflect"),
        nn.LayerNorm(4),
        nn.ConvTranspose2d(4, 2, 2),
        nn.Linear(2, 3),
    )
    rows = {name: block for name, _, block in ParameterLayout(model).describe()}
    assert list(rows) == [name for name, _ in model.named_parameters()]
    assert rows["0.weight"] == "diagonal (Conv2d with groups = 2)"
    assert rows["1.weight"].startswith("diagonal (Conv1d with padding")
    assert rows["2.weight"] == "diagonal (LayerNorm: no Kronecker form)"
    assert rows["3.weight"] == "Kronecker (ConvTranspose2d '3')"
    assert rows["3.bias"] == "diagonal (ConvTranspose2d bias, added after the patches overlap)"
    assert rows["4.weight"] == rows["4.bias"] == "Kronecker (Linear '4')"
    assert "4.bias" in ParameterLayout(model).describe_table()


def test_batch_norm_in_training_mode_is_refused_by_name():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"module '1' \(BatchNorm1d\).*nn.LayerNorm"):
        BlockDiagonalKFAC(model)
    model[1].eval()
    assert len(BlockDiagonalKFAC(model).layout.layers) == 2


def test_module_passed_as_parameters_is_a_type_error():
    with pytest.raises(TypeError, match=r"KFAC\(model\), not model.parameters\(\)"):
        ParameterLayout(nn.Linear(2, 2).parameters())


class TiedAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.encoder(x)), self.encoder.weight.t())


def test_tied_weights_are_refused_with_the_parameter_name(float64):
    torch.manual_seed(23)
    x = torch.rand(3, 4)
    loss = Loss.from_model(TiedAutoencoder().double(), (x,), bernoulli_terms)
    rep = BlockDiagonalKFAC(loss.model)
    with pytest.raises(ValueError, match=r"\['encoder.weight'\] are used more than once"):
        rep.capture(loss)


class EmbeddingRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding, self.out = nn.Embedding(5, 3), nn.Linear(3, 4)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embedding(indices)))


def test_embedding_block_is_exact_for_one_example_with_a_diagonal_input_factor(float64):
    torch.manual_seed(24)
    model = EmbeddingRegression().double()
    loss = Loss.from_model(model, (torch.tensor([3]),), target_terms, targets=(torch.rand(1, 4),))
    rep, dense = refreshed_exact(loss), exact.dense_ggn(loss)
    layer = rep.layout.layers[0]
    assert type(layer.module) is nn.Embedding and (layer.d_out, layer.d_in) == (3, 5)
    index = rep.layout.layer_indices(layer)
    assert relative_error(rep.to_dense()[index][:, index], dense[index][:, index]) < 1e-12
    a = rep.frozen.layers[0].input_factor
    assert torch.equal(a, torch.diag(torch.diag(a)))
