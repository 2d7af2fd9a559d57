"""Exact oracles: implicit products equal dense matrices, and the dense matrices equal independent
maths.
"""

from __future__ import annotations

import pytest
import torch
from curvature_cases import bernoulli_terms, build, flat, problems, random_vectors, relative_error
from torch import nn

from natgrad.curvature import exact
from natgrad.curvature.choices import CurvatureKind
from natgrad.losses import Loss, kl_term

# Products and dense matrices are different torch.func paths (jvp/vjp vs. jacrev / vmap / hessian)
# over the same float64 maths; they agree to rounding, ~1e-15 relative. 1e-10 leaves room for
# accumulation over a few hundred parameters while catching any missing term or factor.
RTOL = 1e-10


@pytest.mark.parametrize("problem", problems())
@pytest.mark.parametrize("kind", ["full", "decoder-only"])
def test_ggn_vector_product_equals_dense_ggn(float64, problem, kind):
    loss = build(problem)
    v = random_vectors(loss)
    dense = exact.dense_ggn(loss, kind=kind)
    assert (
        relative_error(flat(exact.ggn_vector_product(loss, v, kind=kind)), dense @ flat(v)) < RTOL
    )


def test_vae_ggn_is_sum_of_the_two_terms(float64):
    """G_full = J_dec^T H_lik J_dec + J_enc^T H_KL J_enc, each term built as its own Loss."""
    loss = build("vae")
    kl_only = Loss.from_model(
        loss.model, loss.inputs, lambda out, inputs: (kl_term(out.posterior),)
    )
    full = exact.dense_ggn(loss, kind="full")
    parts = exact.dense_ggn(loss, kind="decoder-only") + exact.dense_ggn(kl_only)
    assert relative_error(parts, full) < RTOL
    # the KL term is not negligible here
    assert exact.dense_ggn(kl_only).norm() > 1e-3 * full.norm()


def test_vae_decoder_jacobian_reaches_the_encoder(float64):
    """With the likelihood term alone, the GGN still has encoder rows (through mu and sigma)."""
    loss = build("vae")
    dense = exact.dense_ggn(loss, kind="decoder-only")
    encoder = sum(p.numel() for p in loss.model.encoder.parameters())
    assert dense[:encoder, :encoder].abs().max() > 1e-6


def test_ggn_equals_hessian_when_outputs_are_linear_in_params(float64):
    """One Linear layer: z is linear in theta, so the Hessian of h is exactly J^T H_L J / N."""
    torch.manual_seed(0)
    loss = Loss.from_model(
        nn.Linear(3, 4),
        (torch.rand(5, 3),),
        lambda out, inp: bernoulli_terms(out, (inp[0][:, :1].expand(-1, 4),)),
    )
    assert relative_error(exact.dense_ggn(loss), exact.dense_hessian(loss)) < RTOL


@pytest.mark.parametrize("problem", problems(dense_hessian=True))
def test_hessian_vector_product_equals_dense_hessian(float64, problem):
    loss = build(problem)
    v = random_vectors(loss)
    assert (
        relative_error(
            flat(exact.hessian_vector_product(loss, v)), exact.dense_hessian(loss) @ flat(v)
        )
        < RTOL
    )


@pytest.mark.parametrize("problem", problems())
def test_empirical_fisher_product_and_dense_match_a_per_example_loop(float64, problem):
    loss = build(problem)
    params = list(loss.parameters().values())
    rows = []
    for n in range(loss.batch_size):  # the independent oracle: one autograd.grad per example
        one = Loss.from_model(
            loss.model, tuple(x[n : n + 1] for x in loss.inputs), loss.build_terms
        )
        rows.append(flat(torch.autograd.grad(one.value, params)))
    grads = torch.stack(rows)
    expected = grads.T @ grads / loss.batch_size
    dense = exact.dense_empirical_fisher(loss)
    assert relative_error(dense, expected) < RTOL
    v = random_vectors(loss)
    assert (
        relative_error(flat(exact.empirical_fisher_vector_product(loss, v)), expected @ flat(v))
        < RTOL
    )
    assert relative_error(exact.dense_curvature(loss, kind="empirical"), expected) < RTOL


def test_fisher_is_the_likelihood_ggn(float64):
    loss = build("vae")
    v = random_vectors(loss)
    dense = exact.dense_fisher(loss)
    assert relative_error(dense, exact.dense_ggn(loss, kind=CurvatureKind.DECODER_ONLY)) < RTOL
    assert relative_error(flat(exact.fisher_vector_product(loss, v)), dense @ flat(v)) < RTOL


def test_products_at_other_params_are_pure_functions(float64):
    loss = build("autoencoder")
    moved = {k: p.detach() + 0.3 for k, p in loss.parameters().items()}
    v = random_vectors(loss)
    at_moved = flat(exact.ggn_vector_product(loss, v, params=moved))
    assert relative_error(at_moved, exact.dense_ggn(loss, params=moved) @ flat(v)) < RTOL
    assert relative_error(at_moved, exact.dense_ggn(loss) @ flat(v)) > 1e-3


def test_errors_name_the_field():
    loss = build("autoencoder")
    with pytest.raises(
        ValueError, match=r"Invalid kind: 'gauss'; allowed: full, decoder-only, empirical"
    ):
        exact.dense_curvature(loss, kind="gauss")
    with pytest.raises(ValueError, match="use empirical_fisher"):
        exact.ggn_vector_product(loss, random_vectors(loss), kind="empirical")
    with pytest.raises(ValueError, match="one tensor per parameter"):
        exact.ggn_vector_product(loss, random_vectors(loss)[:-1])
