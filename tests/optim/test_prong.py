"""PRONG / PRONG+: Alg. 1's schedule, the SGD rule in whitened coordinates, state, validation, registry."""
from __future__ import annotations

import copy

import pytest
import torch
from optimizer_cases import loss_closure

from natgrad.curvature.whitening import WhitenedLinear
from natgrad.experiments.config import OptimizerConfig
from natgrad.experiments.optimizers import build_optimizer
from natgrad.losses import build_loss
from natgrad.models import VAE, DeepAutoencoder
from natgrad.optim.prong import PRONG


def _model(kind: str):
    torch.manual_seed(0)
    return VAE((8, 6, 2)) if kind == "vae" else DeepAutoencoder((8, 6, 2), init="default")


def _batch(kind: str, seed: int, n: int = 16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 8, generator=gen).round()
    return x, (torch.randn(n, 2, generator=gen) if kind == "vae" else None)


def test_reestimates_every_T_steps_on_the_most_recent_samples(float64):
    model = _model("autoencoder")
    optimizer = PRONG(model, lr=0.1, reestimate_every=3, samples=40, epsilon=1e-3)
    seen = []
    for step in range(1, 8):
        x, eps = _batch("autoencoder", step)
        centre = optimizer.layers[0].centre.clone()
        optimizer.step(loss_closure(optimizer, model, x, eps))
        record = optimizer.last_step_record
        seen.append(record.reestimated)
        if record.reestimated:  # 40 rows: this batch of 16 and the 24 before it
            assert record.samples == 40 and not torch.equal(centre, optimizer.layers[0].centre)
            recent = torch.cat([_batch("autoencoder", s)[0] for s in range(step - 2, step + 1)])[-40:]
            assert torch.allclose(optimizer.layers[0].centre, recent.mean(dim=0), rtol=0, atol=1e-12)
    assert seen == [False, False, True, False, False, True, False]


def test_step_is_sgd_with_momentum_in_the_whitened_parameters(float64):
    """Between re-estimations, PRONG is torch.optim.SGD on the whitened module (same rule, same numbers)."""
    model = _model("autoencoder")
    optimizer = PRONG(model, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, reestimate_every=1)
    x, _ = _batch("autoencoder", 1)
    optimizer.step(loss_closure(optimizer, model, x, None))
    optimizer.param_groups[0]["reestimate_every"] = 100  # no further re-estimation
    reference = copy.deepcopy(model)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for p, q in zip(model.parameters(), reference.parameters()):
        sgd.state[q]["momentum_buffer"] = optimizer.state[p]["momentum_buffer"].clone()
    for seed in (2, 3):
        x, _ = _batch("autoencoder", seed)
        optimizer.step(loss_closure(optimizer, model, x, None))
        sgd.step(loss_closure(sgd, reference, x, None))
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)


def test_momentum_is_mapped_with_the_parameters(float64):
    """After a re-estimation the velocity is the same displacement of the canonical (W, b)."""
    model = _model("autoencoder")
    optimizer = PRONG(model, lr=0.05, momentum=0.9, reestimate_every=100)
    optimizer.step(loss_closure(optimizer, model, *_batch("autoencoder", 1)))
    layer = optimizer.layers[1]

    def canonical_velocity():
        v_w, v_d = (optimizer.state[p]["momentum_buffer"] for p in (layer.weight, layer.bias))
        w = v_w @ layer.whitening
        return w, v_d - w @ layer.centre

    optimizer.step(loss_closure(optimizer, model, *_batch("autoencoder", 2)))
    before = canonical_velocity()
    optimizer._reestimate(optimizer.state["prong"]["samples"], optimizer.param_groups[0])
    assert not torch.equal(layer.whitening, torch.eye(layer.in_features))
    for a, b in zip(canonical_velocity(), before):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["prong", "prong+"])
def test_state_dict_round_trip_gives_identical_steps(kind, batch_norm):
    model = _model(kind)
    optimizer = PRONG(model, lr=0.05, reestimate_every=2, samples=12, batch_norm=batch_norm)
    for seed in range(3):
        optimizer.step(loss_closure(optimizer, model, *_batch(kind, seed)))
    clone_model = _model(kind)
    clone = PRONG(clone_model, lr=0.05, reestimate_every=2, samples=12, batch_norm=batch_norm)
    clone_model.load_state_dict(model.state_dict())
    clone.load_state_dict(optimizer.state_dict())
    for seed in range(3, 6):
        optimizer.step(loss_closure(optimizer, model, *_batch(kind, seed)))
        clone.step(loss_closure(clone, clone_model, *_batch(kind, seed)))
        assert optimizer.last_step_record == clone.last_step_record
    for p, q in zip(model.state_dict().values(), clone_model.state_dict().values()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
def test_descends_and_rejects_a_nan_gradient(kind):
    model = _model(kind)
    # epsilon = 1e-2: at 1e-3 this 8-pixel toy amplifies near-constant hidden directions ~30x and
    # diverges at any lr >= 0.02 with momentum 0.9 (the regulariser matters, as the paper says).
    optimizer = PRONG(model, lr=0.05, reestimate_every=5, epsilon=1e-2, batch_norm=kind == "vae")
    x, eps = _batch(kind, 0, n=32)
    closure = loss_closure(optimizer, model, x, eps)
    first = float(optimizer.step(closure).value.detach())
    for _ in range(20):
        optimizer.step(closure)
    assert float(build_loss(model, x, eps=eps).value.detach()) < first - 0.5
    params = [p.detach().clone() for p in model.parameters()]

    def poisoned():
        loss = closure()
        next(model.parameters()).grad[0, 0] = float("nan")
        return loss

    optimizer.step(poisoned)
    assert optimizer.last_step_record.rejected and optimizer.last_step_record.rejected_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(params, model.parameters()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0.0}, "Invalid prong.lr: 0.0"),
        ({"momentum": 1.0}, "Invalid prong.momentum: 1.0"),
        ({"reestimate_every": 0}, "Invalid prong.reestimate_every: 0"),
        ({"samples": 1}, "Invalid prong.samples: 1"),
        ({"epsilon": 0.0}, "Invalid prong.epsilon: 0.0"),
        ({"momentum": 0.0, "nesterov": True}, "Invalid prong.nesterov"),
    ],
)
def test_invalid_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PRONG(DeepAutoencoder((4, 2), init="default"), **kwargs)


def test_registry_whitens_the_model():
    model = DeepAutoencoder((4, 3, 2), init="default")
    optimizer = build_optimizer(model, OptimizerConfig(name="prong", options={"batch_norm": True, "samples": 50}))
    assert isinstance(optimizer, PRONG) and optimizer.param_groups[0]["samples"] == 50
    assert all(isinstance(m, WhitenedLinear) for m in (model.encoder[0], model.decoder[-1]))
    with pytest.raises(ValueError, match="not used by 'prong'"):
        build_optimizer(DeepAutoencoder((4, 2)), OptimizerConfig(name="prong", options={"T": 5}))
