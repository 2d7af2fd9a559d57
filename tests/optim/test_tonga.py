"""TONGA on the shared step: its direction, state round-trip, validation, descent, registry."""
from __future__ import annotations

import copy

import pytest
import torch
from optimizer_cases import loss_closure

from natgrad.curvature.exact import per_example_gradients
from natgrad.experiments.config import OptimizerConfig
from natgrad.experiments.optimizers import build_optimizer
from natgrad.losses import build_loss
from natgrad.models import VAE, DeepAutoencoder
from natgrad.optim.tonga import TONGA


def _data(n: int = 16, d: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=gen).round(), gen


def test_fixed_step_is_the_papers_update_at_full_rank(float64):
    """quadratic_model off, momentum 0, one step, plain blocks, full rank:
    theta_1 = theta_0 - lr (C + (lambda + eta) I)^{-1} grad, C the empirical Fisher of the statistics examples."""
    torch.manual_seed(0)
    model = DeepAutoencoder((8, 3, 2), init="default")
    x, _ = _data()
    lr, lam, eta = 0.5, 0.2, 1e-3
    optimizer = TONGA(model, tonga={"rank": 4, "blocks": "none", "examples_per_update": 4},
                      damping={"initial": lam, "weight_decay": eta},
                      schedule={"statistics_fraction": 0.25},
                      step={"quadratic_model": False, "learning_rate": lr, "momentum": 0.0})
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    loss = build_loss(model, x)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss.value, list(model.parameters()))]) + eta * theta0
    g = per_example_gradients(build_loss(model, x[:4]))
    fisher = g.T @ g / 4
    expected = theta0 - lr * torch.linalg.solve(fisher + (lam + eta) * torch.eye(len(theta0)), grad)
    optimizer.step(loss_closure(optimizer, model, x))
    theta1 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert (theta1 - expected).abs().max() <= 1e-10 * expected.abs().max()


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
def test_state_dict_round_trip_gives_identical_steps(kind):
    torch.manual_seed(0)
    model = VAE((8, 6, 2)) if kind == "vae" else DeepAutoencoder((8, 6, 2), init="default")
    x, gen = _data(seed=1)
    eps = torch.randn(16, 2, generator=gen) if kind == "vae" else None
    options = {"tonga": {"rank": 3, "examples_per_update": 4}, "damping": {"initial": 1.0},
               "schedule": {"statistics_fraction": 0.5, "inverse_every": 2}}
    optimizer = TONGA(model, **options)
    for _ in range(3):
        optimizer.step(loss_closure(optimizer, model, x, eps))
    clone = copy.deepcopy(model)
    clone_optimizer = TONGA(clone, **options)
    clone_optimizer.load_state_dict(optimizer.state_dict())
    for _ in range(3):
        optimizer.step(loss_closure(optimizer, model, x, eps))
        clone_optimizer.step(loss_closure(clone_optimizer, clone, x, eps))
        assert optimizer.last_step_record == clone_optimizer.last_step_record
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


def test_descends_on_a_small_autoencoder():
    torch.manual_seed(0)
    model = DeepAutoencoder((8, 6, 2), init="default")
    x, _ = _data(n=32)
    optimizer = TONGA(model, tonga={"rank": 4, "examples_per_update": 8}, damping={"initial": 1.0},
                      schedule={"statistics_fraction": 0.25})
    closure = loss_closure(optimizer, model, x)
    first = float(optimizer.step(closure).value.detach())
    for _ in range(15):
        optimizer.step(closure)
    assert float(build_loss(model, x).value.detach()) < first - 0.05
    assert optimizer.last_step_record.rejected_steps == 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tonga": {"rank": 0}}, "Invalid tonga.rank: 0"),
        ({"tonga": {"blocks": "rows"}}, "Invalid tonga.blocks: 'rows'"),
        ({"tonga": {"size": 3}}, "Invalid tonga: \\['size'\\]"),
        ({"damping": {"initial": -1.0}}, "Invalid damping.initial: -1.0"),
        ({"schedule": {"inverse_every": 0}}, "Invalid schedule.inverse_every: 0"),
    ],
)
def test_invalid_settings_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        TONGA(DeepAutoencoder((4, 2), init="default"), **options)


def test_registry_builds_tonga_with_l2_and_rejects_unknown_options():
    model = DeepAutoencoder((4, 2), init="default")
    optimizer = build_optimizer(model, OptimizerConfig(name="tonga", l2=1e-4, options={"tonga": {"rank": 2}}))
    assert isinstance(optimizer, TONGA)
    assert optimizer.damping_config.weight_decay == 1e-4 and optimizer.curvature.config.rank == 2
    with pytest.raises(ValueError, match="not used by 'tonga'"):
        build_optimizer(model, OptimizerConfig(name="tonga", options={"lambda": 1.0}))
