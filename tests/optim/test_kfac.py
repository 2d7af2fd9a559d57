"""K-FAC against closed forms: on one Linear layer with a Gaussian output and exact statistics,
K-FAC's curvature is the exact GGN, so its step is the exact natural-gradient step (here also the
Newton step, which lands on the least-squares solution).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from natgrad.curvature.choices import CurvatureKind
from natgrad.curvature.exact import dense_ggn
from natgrad.distributions import Gaussian
from natgrad.losses import Loss, build_loss, likelihood_term
from natgrad.models import VAE
from natgrad.optim import KFAC, exponential_batch_size


class Regression(nn.Module):
    """``y ~ N(W x + b, I)``; ``y`` rides along in the inputs so any sub-batch can be
    re-evaluated.
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(2, 3, generator=g))
            self.linear.bias.copy_(torch.randn(2, generator=g))

    def forward(self, x, y):
        return Gaussian(self.linear(x))


def regression_terms(out, inputs):
    return (likelihood_term(out, inputs[1]),)


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g) * torch.tensor([1.0, 3.0, 0.3]) + 0.5
    y = x @ torch.randn(3, 2, generator=g) + 0.1 * torch.randn(n, 2, generator=g)
    return x, y


def _exact_kfac(model, **step):
    # lambda -> 0 and eta = 0: factored Tikhonov shifts pi*gamma ~ 2e-8 perturb the solve by
    # ~2e-8 / eig_min(A) ~ 5e-7 relative (eig_min(A) ~ 0.05 here), hence rtol 1e-5 below.
    return KFAC(
        model,
        damping={"initial": 1e-16, "weight_decay": 0.0, "adapt_gamma": False},
        schedule={"statistics_fraction": 1.0},
        curvature={"estimator": "square-root"},
        step={"model_fraction": 1.0, **step},  # the model's GGN on the whole batch: alpha is exact
    )


def test_kfac_step_is_the_exact_natural_gradient_step(float64):
    x, y = _data()
    model = Regression()
    optimizer = _exact_kfac(model)

    def closure():
        optimizer.zero_grad()
        loss = Loss.from_model(model, (x, y), regression_terms)
        loss.value.backward()
        return loss

    loss = closure()
    gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    natural = -torch.linalg.solve(dense_ggn(loss), gradient)  # exact natural-gradient direction
    optimizer.step(closure)
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    record = optimizer.last_step_record
    # The objective is quadratic with Hessian = GGN, so the quadratic model's alpha is 1 and mu 0.
    assert record.alpha == pytest.approx(1.0, abs=1e-5) and record.mu == 0.0
    torch.testing.assert_close(after - before, natural, rtol=1e-5, atol=1e-7)
    # ... and the step lands on the least-squares solution [W, b] = Y^T X_bar (X_bar^T X_bar)^{-1}.
    x_bar = torch.cat([x, torch.ones(len(x), 1)], 1)
    solution = torch.linalg.solve(x_bar.T @ x_bar, x_bar.T @ y).T  # (2, 4) = [W, b]
    torch.testing.assert_close(model.linear.weight.detach(), solution[:, :3], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.linear.bias.detach(), solution[:, 3], rtol=1e-5, atol=1e-7)


def test_fixed_step_variant_scales_the_kfac_direction(float64):
    # Without the quadratic model the update is lr * Delta (no rho, damping fixed).
    x, y = _data()
    model = Regression()
    optimizer = _exact_kfac(model, quadratic_model=False, learning_rate=0.5)

    def closure():
        optimizer.zero_grad()
        loss = Loss.from_model(model, (x, y), regression_terms)
        loss.value.backward()
        return loss

    loss = closure()
    gradient = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    natural = -torch.linalg.solve(dense_ggn(loss), gradient)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    optimizer.step(closure)
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(after - before, 0.5 * natural, rtol=1e-5, atol=1e-7)
    assert optimizer.last_step_record.rho is None


@pytest.mark.parametrize("kind", ["full", "decoder-only", "empirical"])
def test_vae_curvature_choice_is_used_and_descends(kind):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = VAE([12, 6, 2])
    x = torch.bernoulli(torch.rand(48, 12, generator=g), generator=g)
    eps = torch.randn(48, 2, generator=g)
    optimizer = KFAC(model, damping={"initial": 1.0}, curvature={"kind": kind})
    assert optimizer.curvature.config.kind is CurvatureKind(kind)

    def closure():
        optimizer.zero_grad()
        loss = build_loss(model, x, eps=eps)
        loss.value.backward()
        return loss

    first = float(optimizer.step(closure).value.detach())
    for _ in range(15):
        optimizer.step(closure)
    # negative ELBO of 48 fixed examples and noise: 16 steps lower it by 8.4% for each kind
    # (measured).
    assert float(build_loss(model, x, eps=eps).value.detach()) < 0.95 * first


def test_exponential_batch_schedule_matches_section_13():
    assert exponential_batch_size(1, 60000) == 1000
    assert exponential_batch_size(500, 60000) == 60000
    assert exponential_batch_size(10_000, 60000) == 60000
    # doubling period b = 499 / log2(60) ~ 84.5 steps: 1992 = floor(1000 * 2^(84 / 84.48)) at step
    # 85.
    assert exponential_batch_size(85, 60000) == 1992
    sizes = [exponential_batch_size(k, 60000) for k in range(1, 501)]
    assert sizes == sorted(sizes)
    assert exponential_batch_size(3, 500) == 500
    with pytest.raises(ValueError, match="step"):
        exponential_batch_size(0, 60000)


def test_exponential_batch_schedule_reaches_the_full_set_exactly_at_full_at():
    assert exponential_batch_size(1, 60000) == 1000
    assert exponential_batch_size(500, 60000) == 60000
    assert exponential_batch_size(499, 60000) < 60000
    # float rounding once gave 999 here (2^{39/39 * log2 100} * 10 = 999.99...)
    assert exponential_batch_size(40, 1000, initial=10, full_at=40) == 1000
