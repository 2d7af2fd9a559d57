"""Diagonal representation: equals the diagonal of the dense matrix it estimates, and its own
to_dense.
"""

from __future__ import annotations

import pytest
import torch
from curvature_cases import build, flat, problems, random_vectors, relative_error

from natgrad.curvature import CurvatureConfig, DiagonalCurvature, exact


def refreshed(loss, **config):
    rep = DiagonalCurvature(loss.model, CurvatureConfig(**config))
    rep.update(rep.capture(loss, torch.Generator().manual_seed(0)))
    rep.refresh()
    return rep


@pytest.mark.parametrize("problem", problems())
@pytest.mark.parametrize("kind", ["full", "decoder-only", "empirical"])
def test_exact_diagonal_is_diag_of_dense(float64, problem, kind):
    """Square-root statistics (or the loss gradient for 'empirical') make the diagonal exact."""
    loss = build(problem)
    rep = refreshed(loss, kind=kind, estimator="square-root")
    dense = exact.dense_curvature(loss, kind=kind)
    assert relative_error(rep.to_dense().diagonal(), dense.diagonal()) < 1e-12


def test_solve_and_matvec_match_own_dense(float64):
    loss = build("vae")
    rep = refreshed(loss)
    v = random_vectors(loss)
    assert (
        relative_error(flat(rep.solve(v, 0.2)), torch.linalg.solve(rep.to_dense(0.2), flat(v)))
        < 1e-12
    )
    assert relative_error(flat(rep.matvec(v)), rep.to_dense() @ flat(v)) < 1e-14
