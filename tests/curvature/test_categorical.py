"""Softmax cross-entropy: its non-diagonal output curvature, checked against dense torch.func
matrices.
"""

from __future__ import annotations

import pytest
import torch
from curvature_cases import flat, random_vectors, relative_error
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.nn import functional as F

from natgrad.curvature import BlockDiagonalKFAC, CurvatureConfig, DiagonalCurvature, exact
from natgrad.distributions import Bernoulli, Categorical
from natgrad.losses import Loss, LossTerm, cross_entropy, likelihood_term
from natgrad.optim.quadratic_model import ggn_gram


def classifier(n: int = 5, classes: int = 4) -> Loss:
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, classes))
    return cross_entropy(model, torch.randn(n, 3), torch.randint(classes, (n,)))


def torch_func_ggn(loss: Loss) -> torch.Tensor:
    """``(1/N) sum_n J_n^T H_n J_n`` with ``J_n`` from jacrev and ``H_n`` the Hessian of
    F.cross_entropy.
    """
    params = {k: v.detach() for k, v in loss.parameters().items()}
    (x,), (y,) = loss.inputs, loss.targets
    jac = jacrev(lambda p: functional_call(loss.model, p, (x,)))(params)
    # (N, K, P)
    j = torch.cat([t.reshape(x.shape[0], -1, t[0, 0].numel()) for t in jac.values()], dim=2)
    logits = loss.model(x).detach()
    # (N, K, K)
    h = torch.stack([hessian(lambda z: F.cross_entropy(z, t))(z) for z, t in zip(logits, y)])
    return torch.einsum("nkp,nkl,nlq->pq", j, h, j) / x.shape[0]


def test_value_is_torch_cross_entropy(float64):
    loss = classifier()
    expected = F.cross_entropy(loss.model(loss.inputs[0]), loss.targets[0])
    torch.testing.assert_close(loss.value, expected, rtol=1e-14, atol=0)


def test_dense_ggn_and_products_match_torch_func(float64):
    loss = classifier()
    oracle = torch_func_ggn(loss)
    assert relative_error(exact.dense_ggn(loss), oracle) < 1e-10
    v = random_vectors(loss)
    assert relative_error(flat(exact.ggn_vector_product(loss, v)), oracle @ flat(v)) < 1e-10
    u = random_vectors(loss, seed=1)
    gram = ggn_gram(loss, [v, u])
    torch.testing.assert_close(gram[0, 1], flat(v) @ oracle @ flat(u), rtol=1e-10, atol=0)


def test_kfac_exact_roots_one_layer_one_example_is_exact_ggn(float64):
    """A single Linear on one example: A (x) G with the matrix root's columns is the GGN exactly."""
    torch.manual_seed(12)
    loss = cross_entropy(nn.Linear(3, 4), torch.randn(1, 3), torch.tensor([2]))
    rep = BlockDiagonalKFAC(loss.model, CurvatureConfig(estimator="square-root"))
    rep.update(rep.capture(loss))
    rep.refresh()
    assert relative_error(rep.to_dense(), torch_func_ggn(loss)) < 1e-10


def test_diagonal_exact_roots_give_diag_of_ggn(float64):
    loss = classifier()
    rep = DiagonalCurvature(loss.model, CurvatureConfig(estimator="square-root"))
    rep.update(rep.capture(loss))
    rep.refresh()
    assert relative_error(rep.to_dense().diagonal(), torch_func_ggn(loss).diagonal()) < 1e-10


@pytest.mark.slow
def test_square_root_and_sampled_gradients_have_the_curvature_as_covariance(float64):
    term = classifier(n=2).terms[0]
    (h,), (b,) = term.curvature, term.curvature_sqrt()
    torch.testing.assert_close(b @ b.transpose(1, 2), h, rtol=0, atol=1e-14)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([term.sample_output_gradient(gen)[0] for _ in range(20000)])  # (S, N, K)
    covariance = torch.einsum("snk,snl->nkl", draws, draws) / draws.shape[0]
    assert float((covariance - h).abs().max()) < 0.01


def test_hand_written_diagonal_differs_from_the_exact_ggn(float64):
    """The issue's p(1-p) term is a valid shape but a different matrix: the exact form is needed."""
    loss = classifier()
    logits = loss.terms[0].outputs[0]
    wrong = Loss.from_model(
        loss.model,
        loss.inputs,
        lambda out, batch: (
            LossTerm(
                "ce",
                (out,),
                F.cross_entropy(out, batch[-1], reduction="none"),
                Categorical(out).curvature_diagonal(),
            ),
        ),
        loss.targets,
    )
    assert logits.shape == wrong.terms[0].outputs[0].shape
    assert relative_error(exact.dense_ggn(wrong), torch_func_ggn(loss)) > 0.1


@pytest.mark.parametrize("shape", [(5,), (5, 4, 3), (4, 4)])
def test_curvature_of_the_wrong_shape_is_refused(float64, shape):
    logits = torch.randn(5, 4)
    with pytest.raises(ValueError, match="curvature shape"):
        LossTerm("ce", (logits,), torch.zeros(5), (torch.ones(shape),))


def test_image_shaped_output_exact_estimator_matches_flattened(float64):
    """A (N, 1, H, W) Bernoulli output: square roots over every pixel, not only the channel
    dimension.
    """
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 9), nn.Unflatten(1, (1, 3, 3)))
    x = torch.rand(3, 4)
    target = torch.rand(3, 1, 3, 3)
    image = Loss.from_model(
        model, (x,), lambda out, b: (likelihood_term(Bernoulli(out), b[-1]),), (target,)
    )
    dense = exact.dense_ggn(image)
    flattened = Loss.from_model(
        model, (x,), lambda out, b: (likelihood_term(Bernoulli(out.flatten(1)), b[-1]),), (target,)
    )
    assert relative_error(dense, exact.dense_ggn(flattened)) < 1e-12
    for representation in (BlockDiagonalKFAC, DiagonalCurvature):
        rep = representation(model, CurvatureConfig(estimator="square-root"))
        rep.update(rep.capture(image))
        rep.refresh()
        reference = representation(model, CurvatureConfig(estimator="square-root"))
        reference.update(reference.capture(flattened))
        reference.refresh()
        assert relative_error(rep.to_dense(), reference.to_dense()) < 1e-12
    assert relative_error(rep.to_dense().diagonal(), dense.diagonal()) < 1e-12
