"""Conjugate gradient with Martens' stopping rule (Martens 2010, sections 4.4-4.6)."""

from __future__ import annotations

import math

import pytest
import torch

from natgrad.optim.cg import StopReason, conjugate_gradient, storage_schedule


def _spd(n, condition, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    return q @ torch.diag(torch.logspace(0, math.log10(condition), n)) @ q.T, torch.randn(
        n, generator=g
    )


@pytest.mark.parametrize("use_preconditioner", [False, True])
def test_solves_a_quadratic_to_cg_tolerance(float64, use_preconditioner):
    matrix, b = _spd(30, 1e3)
    precond = matrix.diagonal().clone() if use_preconditioner else None
    exact = torch.linalg.solve(matrix, b)
    phi_star = float(-0.5 * b @ exact)
    # Default rule: stop once phi improved by less than k*eps (relative) over the last k = 10
    # iterations, so the remaining relative gap to the minimum is of that order.
    result = conjugate_gradient(lambda v: matrix @ v, b, torch.zeros(30), precond)
    assert result.stop_reason == "relative-progress"
    assert 0 <= (result.objective - phi_star) / abs(phi_star) < 10 * 5e-4
    # A tight tolerance runs CG to the minimiser: the linear solve, to rounding of a cond-1e3
    # system.
    tight = conjugate_gradient(lambda v: matrix @ v, b, torch.zeros(30), precond, tolerance=1e-12)
    assert tight.stop_reason == "relative-progress"
    torch.testing.assert_close(tight.solution, exact, rtol=1e-9, atol=1e-9)


def test_stops_on_relative_progress_before_convergence(float64):
    # b weighted towards large eigenvalues: phi is nearly minimised long before the small-eigenvalue
    # directions converge, so the rule stops early (its purpose) and says why.
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(400, 400, generator=g))
    eigenvalues = torch.logspace(0, 6, 400)
    matrix = q @ torch.diag(eigenvalues) @ q.T
    b = q @ (eigenvalues * torch.randn(400, generator=g))
    result = conjugate_gradient(lambda v: matrix @ v, b, torch.zeros(400), max_iterations=250)
    assert result.stop_reason == "relative-progress" and result.iterations < 250
    exact = torch.linalg.solve(matrix, b)
    assert float((result.solution - exact).norm() / exact.norm()) > 1e-6


def test_max_iterations_is_reported(float64):
    matrix, b = _spd(50, 1e6, seed=2)
    result = conjugate_gradient(lambda v: matrix @ v, b, torch.zeros(50), max_iterations=5)
    assert (result.stop_reason, result.iterations) == ("max-iterations", 5)


def test_warm_start_at_solution_stops_immediately(float64):
    matrix, b = _spd(10, 10.0)
    exact = torch.linalg.solve(matrix, b)
    result = conjugate_gradient(lambda v: matrix @ v, matrix @ exact, exact.clone())
    assert result.stop_reason in list(StopReason) and result.iterations <= 1
    torch.testing.assert_close(result.solution, exact)


def test_non_positive_curvature_is_reported(float64):
    b = torch.ones(3)
    result = conjugate_gradient(lambda v: -v, b, torch.zeros(3))
    assert (result.stop_reason, result.iterations) == ("non-positive-curvature", 0)


def test_non_finite_curvature_is_reported_not_mistaken_for_negative(float64):
    result = conjugate_gradient(lambda v: v * math.nan, torch.ones(3), torch.zeros(3))
    assert (result.stop_reason, result.iterations) == ("non-finite", 0)


def test_iterates_stored_on_martens_schedule(float64):
    assert sorted(storage_schedule(20)) == [5, 7, 9, 11, 15, 19]
    matrix, b = _spd(100, 1e5, seed=3)
    result = conjugate_gradient(lambda v: matrix @ v, b, torch.zeros(100), max_iterations=23)
    assert [i for i, _ in result.iterates] == [5, 7, 9, 11, 15, 19, 23]
    torch.testing.assert_close(result.iterates[-1][1], result.solution)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_iterations"):
        conjugate_gradient(lambda v: v, torch.ones(2), torch.zeros(2), max_iterations=0)
    with pytest.raises(ValueError, match="preconditioner"):
        conjugate_gradient(lambda v: v, torch.ones(2), torch.zeros(2), torch.tensor([1.0, 0.0]))
