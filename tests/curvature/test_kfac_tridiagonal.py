"""Block-tridiagonal K-FAC (Martens & Grosse 2015, §4.3) against its defining properties."""

from __future__ import annotations

import pytest
import torch
from curvature_cases import (
    ConvNet,
    bernoulli_terms,
    build,
    flat,
    problems,
    random_vectors,
    relative_error,
)

from natgrad.curvature import BlockDiagonalKFAC, CurvatureConfig, TridiagonalKFAC, exact
from natgrad.curvature.kfac_tridiagonal import simultaneous_diagonalisation
from natgrad.losses import Loss, build_loss
from natgrad.models import DeepAutoencoder

TIKHONOV = 0.05


def refreshed(rep, loss):
    rep.update(rep.capture(loss, torch.Generator().manual_seed(0)))
    rep.refresh()
    return rep


def block(matrix, rows, cols):
    return matrix[rows.unsqueeze(1), cols]


@pytest.mark.parametrize("problem", problems(tridiagonal=True))
def test_matches_kronecker_factored_fisher_on_tridiagonal_blocks(float64, problem):
    """F_hat_ii = (shifted A_i) (x) (shifted B_i), F_hat_{i,i+1} = A_{i,i+1} (x) B_{i,i+1}
    (row-major: B (x) A).
    """
    loss = build(problem)
    rep = refreshed(TridiagonalKFAC(loss.model), loss)
    dense, frozen = rep.to_dense(TIKHONOV), rep.frozen
    idx = [rep.layout.layer_indices(layer) for layer in rep.layout.layers]
    for i in range(len(idx)):
        a, g = rep.shifted_layer_factors(frozen, i, TIKHONOV)
        assert relative_error(block(dense, idx[i], idx[i]), torch.kron(g, a)) < 1e-9
    for i in range(len(idx) - 1):
        expected = torch.kron(frozen.layers[i].output_cross, frozen.layers[i].input_cross)
        assert relative_error(block(dense, idx[i], idx[i + 1]), expected) < 1e-9


def test_inverse_is_block_tridiagonal(float64):
    loss = build("autoencoder")
    rep = refreshed(TridiagonalKFAC(loss.model), loss)
    precision = torch.linalg.inv(rep.to_dense(TIKHONOV))
    idx = [rep.layout.layer_indices(layer) for layer in rep.layout.layers]
    far = [
        block(precision, idx[i], idx[j]).abs().max()
        for i in range(len(idx))
        for j in range(i + 2, len(idx))
    ]
    assert far and max(far) < 1e-9 * precision.abs().max()
    assert block(precision, idx[0], idx[1]).abs().max() > 1e-6 * precision.abs().max()


@pytest.mark.parametrize("problem", problems(tridiagonal=True))
def test_efficient_solve_equals_dense_inverse(float64, problem):
    loss = build(problem)
    rep = refreshed(TridiagonalKFAC(loss.model), loss)
    v = random_vectors(loss)
    assert (
        relative_error(
            flat(rep.solve(v, TIKHONOV)), torch.linalg.solve(rep.to_dense(TIKHONOV), flat(v))
        )
        < 1e-9
    )


def test_matvec_matches_own_dense(float64):
    """Unshifted F_hat inverts A_{i+1}, B_{i+1}: 64 examples for at most 5-dimensional factors."""
    torch.manual_seed(0)
    loss = build_loss(
        DeepAutoencoder((4, 3, 2), init="default", activation="tanh"), torch.randn(64, 4)
    )
    rep = refreshed(TridiagonalKFAC(loss.model, CurvatureConfig(estimator="square-root")), loss)
    v = random_vectors(loss)
    assert relative_error(flat(rep.matvec(v)), rep.to_dense() @ flat(v)) < 1e-8


def test_simultaneous_diagonalisation(float64):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 5, generator=gen), torch.randn(5, 3, generator=gen)
    a, c = x @ x.T + torch.eye(5), y @ y.T
    k, s = simultaneous_diagonalisation(a, c)
    torch.testing.assert_close(k.T @ a @ k, torch.eye(5), rtol=0, atol=1e-12)
    torch.testing.assert_close(k.T @ c @ k, torch.diag(s), rtol=0, atol=1e-12)


def test_tiny_mlp_inverse_no_worse_than_block_diagonal(float64):
    """|M(gamma^2)^{-1} - (G + gamma^2 I)^{-1}|_F / |(G + gamma^2 I)^{-1}|_F on a 6-5-4-3 tanh
    autoencoder.

    Square-root statistics (no sampling noise), 64 examples. Measured (recorded in
    docs/curvature.md): block-diagonal 0.3294, block-tridiagonal 0.3242 at gamma^2 = 0.1.
    """
    torch.manual_seed(0)
    loss = build_loss(
        DeepAutoencoder((6, 5, 4, 3), init="default", activation="tanh"), torch.rand(64, 6)
    )
    tikhonov = 0.1
    ggn = exact.dense_ggn(loss)
    truth = torch.linalg.inv(ggn + tikhonov * torch.eye(ggn.shape[0]))
    errors = {}
    for cls in (BlockDiagonalKFAC, TridiagonalKFAC):
        rep = refreshed(cls(loss.model, CurvatureConfig(estimator="square-root")), loss)
        errors[cls.__name__] = relative_error(torch.linalg.inv(rep.to_dense(tikhonov)), truth)
    print(f"relative error of the inverse vs. (G + {tikhonov} I)^-1: {errors}")
    assert errors["TridiagonalKFAC"] <= errors["BlockDiagonalKFAC"]


def test_conv_layers_rejected():
    with pytest.raises(
        ValueError, match=r"nn.Linear layers only; got non-Linear layers \['conv'\]"
    ):
        TridiagonalKFAC(ConvNet())


def test_multi_location_linear_rejected(float64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3))
    loss = Loss.from_model(
        model,
        (torch.rand(2, 5, 3),),
        lambda out, inp: bernoulli_terms(out.flatten(1), (inp[0].flatten(1),)),
    )
    rep = TridiagonalKFAC(model)
    with pytest.raises(ValueError, match="needs \\(N, d\\) inputs at every layer"):
        rep.update(rep.capture(loss))
