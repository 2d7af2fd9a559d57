"""The conformance suite: every optimizer in optimizer_cases.py descends, resumes bitwise, guards,
validates.

Each test runs on every case that supports what it checks (``OptimizerCase`` says what that is).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from optimizer_cases import CASES

from natgrad.losses import build_loss
from natgrad.models import VAE, DeepAutoencoder

IDS = [case.name for case in CASES]
GUARDED = [case for case in CASES if case.guards_nonfinite]
SINGLE_GROUP = [case for case in CASES if case.single_group]


def _problem(seed: int = 0, kind: str = "autoencoder"):
    """A tiny logistic autoencoder (or VAE) and a fixed sequence of binary batches (with their VAE
    noise).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = VAE([16, 6, 3]) if kind == "vae" else DeepAutoencoder([16, 6, 3], init="default")
    prototypes = torch.rand(4, 16, generator=g)
    batches = [
        torch.bernoulli(prototypes[torch.randint(0, 4, (32,), generator=g)], generator=g)
        for _ in range(12)
    ]
    noise = [torch.randn(32, 3, generator=g) if kind == "vae" else None for _ in batches]
    return model, batches, noise


def _closure(optimizer, model, x, eps=None, poison: bool = False):
    def closure():
        optimizer.zero_grad()
        loss = build_loss(model, x, eps=eps)
        loss.value.backward()
        if poison:
            next(model.parameters()).grad[0, 0] = math.nan
        return loss

    return closure


def _mean_loss(model, batches) -> float:
    with torch.no_grad():
        return sum(float(build_loss(model, x).value) for x in batches) / len(batches)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_descends_on_a_small_problem(case):
    model, batches, _ = _problem()
    optimizer = case.build(model)
    before = _mean_loss(model, batches)
    for x in batches * 2:
        optimizer.step(_closure(optimizer, model, x))
    after = _mean_loss(model, batches)
    # 24 steps on a 4-prototype problem: measured drops of the NLL are 7% (diagonal) to 23% (HF);
    # requiring 3% rules out a no-op or steps in a random direction.
    assert after < 0.97 * before, (before, after)
    record = getattr(optimizer, "last_step_record", None)
    assert (record is not None) == case.guards_nonfinite  # natgrad's optimizers record every step
    assert record is None or record.rejected is False


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dict_round_trip_gives_identical_trajectory(case, kind):
    """The optimizer is built before the model's state is loaded: PRONG whitens the model in
    place.
    """
    model, batches, noise = _problem(kind=kind)
    optimizer = case.build(model)
    for x, eps in zip(batches[:5], noise[:5]):
        optimizer.step(_closure(optimizer, model, x, eps))
    # deep copies, as torch.save would write them: torch.optim's state_dict holds the live buffers
    saved_model, saved_optimizer = (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
    )
    for x, eps in zip(batches[5:], noise[5:]):
        optimizer.step(_closure(optimizer, model, x, eps))

    # different initial weights, overwritten by the checkpoint
    resumed, _, _ = _problem(seed=1, kind=kind)
    resumed_optimizer = case.build(resumed)
    resumed.load_state_dict(saved_model)
    resumed_optimizer.load_state_dict(saved_optimizer)
    for x, eps in zip(batches[5:], noise[5:]):
        resumed_optimizer.step(_closure(resumed_optimizer, resumed, x, eps))
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert getattr(resumed_optimizer, "last_step_record", None) == getattr(
        optimizer, "last_step_record", None
    )


@pytest.mark.parametrize("case", GUARDED, ids=[case.name for case in GUARDED])
def test_guard_rejects_injected_nan_and_run_continues(case):
    model, batches, _ = _problem()
    optimizer = case.build(model)
    for x in batches[:3]:
        optimizer.step(_closure(optimizer, model, x))
    damping = optimizer.last_step_record.damping
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step(_closure(optimizer, model, batches[3], poison=True))
    record = optimizer.last_step_record
    assert record.rejected is True and record.rejected_steps == 1
    # in the state too
    assert optimizer.state_dict()["state"][type(optimizer).STATE_KEY]["rejected_steps"] == 1
    if case.has_damping:
        assert record.damping > damping
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    start = _mean_loss(model, batches)
    for x in batches[4:]:
        optimizer.step(_closure(optimizer, model, x))
        assert optimizer.last_step_record.rejected is False
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert _mean_loss(model, batches) < start


@pytest.mark.parametrize("case", GUARDED, ids=[case.name for case in GUARDED])
def test_nan_in_the_batch_is_rejected_logged_and_leaves_the_curvature_clean(case, caplog):
    """A NaN from the forward pass (bad data), not only in .grad: the step is rejected before any
    statistics are taken, the log says so, and later steps are finite and accepted.
    """
    model, batches, _ = _problem()
    optimizer = case.build(model)
    for x in batches[:3]:
        optimizer.step(_closure(optimizer, model, x))
    poisoned = batches[3].clone()
    poisoned[0, 0] = math.nan
    with caplog.at_level("WARNING"):
        optimizer.step(_closure(optimizer, model, poisoned))
    assert optimizer.last_step_record.rejected is True
    assert "rejected" in caplog.text
    for x in batches[4:]:
        optimizer.step(_closure(optimizer, model, x))
        assert optimizer.last_step_record.rejected is False
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("case", SINGLE_GROUP, ids=[case.name for case in SINGLE_GROUP])
def test_a_second_param_group_is_refused_not_ignored(case):
    model, _, _ = _problem()
    optimizer = case.build(model)
    with pytest.raises(ValueError, match="one parameter group"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})


@pytest.mark.parametrize(
    "case, overrides, message",
    [(case, overrides, message) for case in CASES for overrides, message in case.invalid],
    ids=[
        f"{case.name}-{next(iter(o))}-{i}"
        for case in CASES
        for i, (o, _) in enumerate(case.invalid)
    ],
)
def test_invalid_settings_are_rejected_with_their_name(case, overrides, message):
    model, _, _ = _problem()
    with pytest.raises(ValueError, match=message):
        case.build(model, **overrides)
