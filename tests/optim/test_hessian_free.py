"""Hessian-free (Martens 2010): its CG solves the damped Gauss-Newton system; pieces alone."""

from __future__ import annotations

import math

import pytest
import torch
from test_kfac import Regression, _data, regression_terms

from natgrad.curvature.exact import dense_ggn, per_example_gradients
from natgrad.losses import Loss
from natgrad.optim import HessianFree
from natgrad.optim.cg import CGResult
from natgrad.optim.hessian_free import armijo_rate, backtrack, chunk_inputs


def _closure(optimizer, model, x, y):
    def closure():
        optimizer.zero_grad()
        loss = Loss.from_model(model, (x, y), regression_terms)
        loss.value.backward()
        return loss

    return closure


@pytest.mark.parametrize("tolerance", [5e-4, 1e-14])
def test_cg_solves_the_damped_gauss_newton_system(float64, tolerance):
    x, y = _data()
    model = Regression()
    optimizer = HessianFree(
        model, damping=0.5, weight_decay=1e-3, curvature_fraction=1.0, cg_tolerance=tolerance
    )
    closure = _closure(optimizer, model, x, y)
    loss = closure()
    gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters()]) + 1e-3 * torch.cat(
        [p.detach().reshape(-1) for p in model.parameters()]
    )
    system = dense_ggn(loss) + (0.5 + 1e-3) * torch.eye(gradient.numel())
    exact = torch.linalg.solve(system, -gradient)
    optimizer.step(closure)
    solution = optimizer.state["hessian_free"]["cg_start"]  # the final CG iterate
    record = optimizer.last_step_record
    assert record.cg_stop_reason == "relative-progress" and not record.rejected
    phi = lambda p: float(0.5 * p @ system @ p + gradient @ p)  # noqa: E731
    if tolerance == 5e-4:
        # Martens' rule: stop when phi improved by < k*eps (relative) over the last k >= 10
        # iterations.
        assert -1e-12 <= (phi(solution) - phi(exact)) / abs(phi(exact)) < 10 * 5e-4
    else:
        torch.testing.assert_close(solution, exact, rtol=1e-9, atol=1e-10)


def test_quadratic_problem_reaches_its_minimiser(float64):
    # Linear regression: GGN = Hessian, so HF with tiny damping takes the Newton step (rho ~ 1).
    x, y = _data()
    model = Regression()
    optimizer = HessianFree(
        model, damping=1e-10, weight_decay=0.0, curvature_fraction=1.0, cg_tolerance=1e-14
    )
    optimizer.step(_closure(optimizer, model, x, y))
    x_bar = torch.cat([x, torch.ones(len(x), 1)], 1)
    solution = torch.linalg.solve(x_bar.T @ x_bar, x_bar.T @ y).T
    torch.testing.assert_close(model.linear.weight.detach(), solution[:, :3], rtol=1e-7, atol=1e-9)
    assert optimizer.last_step_record.rho == pytest.approx(1.0, abs=1e-6)
    assert optimizer.last_step_record.line_search_rate == 1.0


def test_preconditioner_is_the_empirical_fisher_diagonal_power(float64):
    x, y = _data(12)
    model = Regression()
    optimizer = HessianFree(model, curvature_fraction=1.0)
    loss = Loss.from_model(model, (x, y), regression_terms)
    expected = (per_example_gradients(loss).pow(2).mean(0) + 2.0).pow(0.75)
    torch.testing.assert_close(
        optimizer._preconditioner(loss, 2.0), expected, rtol=1e-12, atol=1e-14
    )


def test_backtracking_keeps_the_last_iterate_before_f_rises():
    iterates = [
        (5, torch.tensor(5.0)),
        (7, torch.tensor(7.0)),
        (9, torch.tensor(9.0)),
        (12, torch.tensor(12.0)),
    ]
    result = CGResult(solution=torch.tensor(12.0), iterates=iterates, iterations=12)
    # From the end backwards, stop at the first rise (7), even though an earlier iterate (5) is
    # lower.
    values = {5.0: 0.5, 7.0: 3.0, 9.0: 2.0, 12.0: 4.0}
    iteration, iterate, value = backtrack(result, lambda p: values[float(p)])
    assert (iteration, float(iterate), value) == (9, 9.0, 2.0)


def test_armijo_rate_shrinks_until_sufficient_decrease():
    f = lambda r: (r - 0.3) ** 2  # noqa: E731  f(0) = 0.09, slope f'(0) = -0.6
    rate, value = armijo_rate(f, 0.09, -0.6, f(1.0), shrink=0.8, c=1e-2, max_shrinks=60)
    assert rate == pytest.approx(0.8**3) and value == pytest.approx(f(0.8**3))
    assert armijo_rate(lambda r: 1.0, 0.0, -1.0, 1.0, 0.8, 1e-2, 5) == (0.0, 0.0)
    assert armijo_rate(lambda r: math.nan, 0.0, -1.0, math.nan, 0.8, 1e-2, 3) == (0.0, 0.0)


def test_curvature_chunks_cycle_through_the_batch():
    x = torch.arange(10.0).unsqueeze(1)
    chunks = [chunk_inputs((x,), 4, i)[0].squeeze(1).tolist() for i in range(5)]
    assert chunks == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9], [0, 1, 2]]
