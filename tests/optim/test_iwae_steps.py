"""Every natgrad optimizer takes finite, descending steps on the importance-weighted bound of a tiny
VAE.
"""

from __future__ import annotations

import pytest
import torch
from optimizer_cases import CASES

from natgrad.iwae import build_iwae_loss
from natgrad.models import VAE
from natgrad.optim import KFAC, PRONG

SAMPLES = 5
# the curvature optimizers (PRONG has its own test below); tridiagonal K-FAC is refused below
ONE_LOCATION = [case for case in CASES if case.has_damping and case.name != "kfac-tridiag"]


def _problem():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = VAE([16, 8, 3])
    prototypes = torch.rand(4, 16, generator=g)
    x = torch.bernoulli(prototypes[torch.randint(0, 4, (32,), generator=g)], generator=g)
    return model, x, torch.randn(32, SAMPLES, 3, generator=g)


def _closure(optimizer, model, x, eps, estimator):
    def closure():
        optimizer.zero_grad()
        loss = build_iwae_loss(model, x, SAMPLES, estimator, eps=eps)
        loss.value.backward()
        return loss

    return closure


def _value(model, x, eps) -> float:
    with torch.no_grad():
        return float(build_iwae_loss(model, x, SAMPLES, eps=eps).value)


@pytest.mark.parametrize("estimator", ["plain", "dreg"])
@pytest.mark.parametrize("case", ONE_LOCATION, ids=[case.name for case in ONE_LOCATION])
def test_a_few_steps_on_a_fixed_batch_lower_the_bound_loss(case, estimator):
    model, x, eps = _problem()
    optimizer = case.build(model)
    before = _value(model, x, eps)
    for _ in range(6):
        optimizer.step(_closure(optimizer, model, x, eps, estimator))
        assert optimizer.last_step_record.rejected is False
    after = _value(model, x, eps)
    # six steps on one batch with its noise fixed: -L_5 starts at 10.9 nats; measured drops are 12%
    # (diagonal, DReG) to 24% (HF); requiring 5% rules out a no-op or steps in a random direction.
    assert after < 0.95 * before, (before, after)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_prong_whitens_every_sample_and_descends():
    model, x, eps = _problem()
    optimizer = PRONG(model, lr=0.05, reestimate_every=2, samples=64)
    before = _value(model, x, eps)
    for _ in range(6):
        optimizer.step(_closure(optimizer, model, x, eps, "plain"))
    assert _value(model, x, eps) < before


def test_tridiagonal_kfac_refuses_k_samples_per_example_naming_the_cause():
    model, x, eps = _problem()
    optimizer = KFAC(model, structure="tridiagonal")
    with pytest.raises(ValueError, match="decodes k samples per example"):
        optimizer.step(_closure(optimizer, model, x, eps, "plain"))
