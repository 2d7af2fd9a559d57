"""The runner's registry builds the natural-gradient optimizers with the typed config fields."""

from __future__ import annotations

import pytest

from natgrad.curvature.choices import CurvatureKind
from natgrad.experiments.config import OptimizerConfig
from natgrad.experiments.optimizers import build_optimizer
from natgrad.models import VAE
from natgrad.optim import KFAC, DiagonalNaturalGradient, HessianFree


@pytest.mark.parametrize(
    "name, cls",
    [
        ("kfac", KFAC),
        ("kfac-tridiag", KFAC),
        ("diag", DiagonalNaturalGradient),
        ("hf", HessianFree),
    ],
)
def test_registry_builds_each_optimizer_with_l2_and_curvature(name, cls):
    config = OptimizerConfig(name=name, l2=3e-5, curvature="decoder-only", options={})
    optimizer = build_optimizer(VAE([8, 4, 2]), config)
    assert isinstance(optimizer, cls)
    if isinstance(optimizer, HessianFree):
        assert (optimizer.config.weight_decay, optimizer.config.curvature) == (3e-5, "decoder-only")
    else:
        assert optimizer.damping_config.weight_decay == 3e-5
        assert optimizer.curvature.config.kind is CurvatureKind.DECODER_ONLY
    if name == "kfac-tridiag":
        assert type(optimizer.curvature).__name__ == "TridiagonalKFAC"


def test_registry_passes_options_and_rejects_unknown_ones():
    model = VAE([8, 4, 2])
    optimizer = build_optimizer(
        model, OptimizerConfig(name="kfac", options={"damping": {"initial": 7.0}})
    )
    assert optimizer.state["natural_gradient"]["damping"] == 7.0
    low = build_optimizer(
        model,
        OptimizerConfig(
            name="kfac",
            options={
                "inverse_method": "inverse",
                "solve_dtype": "bfloat16",
                "step": {"model_dtype": "bfloat16"},
            },
        ),
    )
    assert (
        low.curvature.solve_dtype.value == "bfloat16" and low.step_config.model_dtype == "bfloat16"
    )
    with pytest.raises(ValueError, match="bogus"):
        build_optimizer(model, OptimizerConfig(name="kfac", options={"bogus": 1}))
    with pytest.raises(ValueError, match="optimizer.curvature"):
        OptimizerConfig(name="sgd", curvature="full")
    with pytest.raises(ValueError, match="optimizer.lr"):
        build_optimizer(model, OptimizerConfig(name="hf", lr=0.1))


def test_defaults_and_the_paper_preset():
    """Natgrad's damping defaults (lambda_0 = 1, gamma tied) and Martens & Grosse's one option
    away: the preset gives natgrad's former defaults exactly.
    """
    from natgrad.optim.config import DampingConfig, ScheduleConfig, StepConfig, coerce

    assert (DampingConfig().initial, DampingConfig().adapt_gamma) == (1.0, False)
    # the paper's (natgrad's former) defaults
    paper_damping = DampingConfig(initial=150.0, adapt_gamma=True)
    assert DampingConfig.paper() == paper_damping
    assert coerce(DampingConfig, None, "damping", "paper") == paper_damping
    assert coerce(DampingConfig, {"initial": 10.0}, "damping", "paper") == DampingConfig(
        initial=10.0, adapt_gamma=True
    )
    assert coerce(ScheduleConfig, None, "schedule", "paper") == ScheduleConfig()
    assert coerce(StepConfig, None, "step", "paper") == StepConfig()
    with pytest.raises(ValueError, match=r"Invalid preset: 'martens'; allowed: natgrad, paper"):
        coerce(DampingConfig, None, "damping", "martens")
    model = VAE([8, 4, 2])
    paper = build_optimizer(model, OptimizerConfig(name="kfac", options={"preset": "paper"}))
    assert (paper.damping_config, paper.step_config) == (paper_damping, StepConfig())
    assert paper.state["natural_gradient"]["gamma"] == (150.0 + 1e-5) ** 0.5
    tuned = build_optimizer(
        model,
        OptimizerConfig(name="kfac", options={"preset": "paper", "damping": {"initial": 3.0}}),
    )
    assert (tuned.damping_config.initial, tuned.damping_config.adapt_gamma) == (3.0, True)
