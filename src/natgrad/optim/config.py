r"""Typed, validated hyper-parameters of the natural-gradient optimizers, grouped by concern.

Defaults are those of Martens & Grosse 2015 (K-FAC, section 13 and Martens' code ``KFAC_demo_2.m``)
and Martens 2010 (Hessian-free, Martens' code ``nnet_train_2.m``); see ``../shared/PAPERS.md``.
Every value is checked at construction; a wrong one raises ``ValueError`` naming the field, the
value and what is allowed. Dicts (from TOML ``optimizer.options``) convert with :func:`coerce`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from natgrad.curvature.choices import CurvatureKind, OutputGradientEstimator, parse_choice

T = TypeVar("T")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def require(condition: bool, field: str, value: Any, allowed: str) -> None:
    """Raise ``ValueError("Invalid <field>: <value>; allowed: <allowed>")`` unless ``condition``."""
    if not condition:
        raise ValueError(f"Invalid {field}: {value!r}; allowed: {allowed}")


def require_positive(field: str, value: Any) -> None:
    require(_number(value) and math.isfinite(value) and value > 0, field, value, "a finite number > 0")


def require_nonnegative(field: str, value: Any) -> None:
    require(_number(value) and math.isfinite(value) and value >= 0, field, value, "a finite number >= 0")


def require_period(field: str, value: Any) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    require(ok, field, value, "an integer >= 1")


def require_fraction(field: str, value: Any, *, closed_low: bool = False) -> None:
    ok = _number(value) and (0 <= value if closed_low else 0 < value) and value <= 1
    require(ok, field, value, "a number in [0, 1]" if closed_low else "a number in (0, 1]")


@dataclass(frozen=True)
class DampingConfig:
    r"""Levenberg-Marquardt damping ``lambda`` and factored-Tikhonov strength ``gamma``.

    Martens & Grosse 2015, sections 6.3, 6.5, 6.6 (Martens' code for the clipping).

    **Departures (natgrad's defaults), measured in docs/vae-training.md:** ``lambda_0 = 1`` instead
    of the autoencoder papers' 150, and ``gamma = sqrt(lambda + eta)`` tied to ``lambda``
    (section 6.3) instead of the separate search of section 6.6. On the MNIST VAE the paper's pair
    holds the run far more damped than rho asks for during its first hundred steps (lambda needs
    about 95 steps to fall from 150 to 1 at ``omega_1 = 0.77`` per 5 steps, and gamma can fall by
    only ``omega_2 = 0.6`` per 20 steps). ``DampingConfig.paper()`` (part of the ``paper`` preset,
    ``KFAC(model, preset="paper")``) restores the paper's values exactly.

    Attributes:
        initial: ``lambda_0`` (1; the autoencoder papers use 150, about 1 for classifiers).
        weight_decay: ``eta`` of the L2 term ``(eta/2)|theta|^2`` (1e-5); its gradient ``eta theta``
            is added to the loss gradient and ``eta`` to the damping, as in the paper.
        adapt_every: ``T1``, steps between Levenberg-Marquardt updates of ``lambda`` (5).
        decay: per-step factor ``19/20``; ``omega_1 = decay^T1`` (section 6.5).
        minimum, maximum: clip range of ``lambda`` ([0, inf) in Martens' code).
        gamma_every: ``T2``, steps between the 3-candidate search over ``gamma`` (20).
        gamma_initial: ``gamma_0``; None means ``sqrt(lambda_0 + eta)`` (section 6.6).
        gamma_min: None means ``sqrt(eta)`` (Martens' code).
        gamma_max: 1.0 as in Martens' code ("completely arbitrary"); ``inf`` disables the clip.
        adapt_gamma: False (default) keeps ``gamma = sqrt(lambda + eta)`` tied to ``lambda``
            (section 6.3); True searches it separately every ``T2`` steps (section 6.6, the paper).
    """

    initial: float = 1.0
    weight_decay: float = 1e-5
    adapt_every: int = 5
    decay: float = 19.0 / 20.0
    minimum: float = 0.0
    maximum: float = math.inf
    gamma_every: int = 20
    gamma_initial: float | None = None
    gamma_min: float | None = None
    gamma_max: float = 1.0
    adapt_gamma: bool = False

    def __post_init__(self) -> None:
        require_positive("damping.initial", self.initial)
        require_nonnegative("damping.weight_decay", self.weight_decay)
        require_period("damping.adapt_every", self.adapt_every)
        require(_number(self.decay) and 0 < self.decay < 1, "damping.decay", self.decay, "a number in (0, 1)")
        require_nonnegative("damping.minimum", self.minimum)
        require(_number(self.maximum) and self.maximum >= self.minimum, "damping.maximum", self.maximum,
                f"a number >= damping.minimum ({self.minimum})")
        require_period("damping.gamma_every", self.gamma_every)
        if self.gamma_initial is not None:
            require_positive("damping.gamma_initial", self.gamma_initial)
        if self.gamma_min is not None:
            require_nonnegative("damping.gamma_min", self.gamma_min)
        require(_number(self.gamma_max) and self.gamma_max > 0, "damping.gamma_max", self.gamma_max, "a number > 0")
        require(isinstance(self.adapt_gamma, bool), "damping.adapt_gamma", self.adapt_gamma, "true or false")

    @classmethod
    def paper(cls, **overrides: Any) -> "DampingConfig":
        """Martens & Grosse's autoencoder setting: ``lambda_0 = 150`` and the separate gamma search."""
        return cls(**{"initial": 150.0, "adapt_gamma": True, **overrides})

    @property
    def lm_decrease(self) -> float:
        """``omega_1 = decay^{T1}``."""
        return self.decay**self.adapt_every

    @property
    def gamma_factor(self) -> float:
        """``omega_2 = sqrt(decay)^{T2}``."""
        return math.sqrt(self.decay) ** self.gamma_every

    def gamma_start(self) -> float:
        return self.gamma_initial if self.gamma_initial is not None else math.sqrt(self.initial + self.weight_decay)

    def gamma_floor(self) -> float:
        return self.gamma_min if self.gamma_min is not None else math.sqrt(self.weight_decay)


@dataclass(frozen=True)
class ScheduleConfig:
    r"""When curvature statistics and inverses are refreshed (Martens & Grosse 2015, sections 5, 8).

    Attributes:
        statistics_every: steps between statistics updates (1: every step, as in Martens' code;
            the paper's cost analysis, section 8, also allows larger values).
        statistics_fraction: ``tau_1``, the fraction of the batch the statistics use (1/8).
        inverse_every: ``T3``, steps between refreshes of the inverses (20); the paper also
            refreshes at each of the first ``warmup_refreshes`` steps (3).
        warmup_refreshes: see above.
        ema_cap: the moving-average weight ``min(1 - 1/k, ema_cap)`` (0.95).
    """

    statistics_every: int = 1
    statistics_fraction: float = 1.0 / 8.0
    inverse_every: int = 20
    warmup_refreshes: int = 3
    ema_cap: float = 0.95

    def __post_init__(self) -> None:
        require_period("schedule.statistics_every", self.statistics_every)
        require_fraction("schedule.statistics_fraction", self.statistics_fraction)
        require_period("schedule.inverse_every", self.inverse_every)
        ok = isinstance(self.warmup_refreshes, int) and not isinstance(self.warmup_refreshes, bool)
        require(ok and self.warmup_refreshes >= 0, "schedule.warmup_refreshes", self.warmup_refreshes, "an integer >= 0")
        require(_number(self.ema_cap) and 0 <= self.ema_cap < 1, "schedule.ema_cap", self.ema_cap, "a number in [0, 1)")


#: Precisions of the quadratic model's forward-mode pass (``StepConfig.model_dtype``).
MODEL_DTYPES: dict[str, torch.dtype | None] = {"parameters": None, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class StepConfig:
    r"""How the update is scaled: the quadratic model (sections 6.4, 7) or fixed coefficients.

    Attributes:
        quadratic_model: choose ``alpha`` (and ``mu``) by minimising the exact-GGN quadratic model
            (the paper). False uses the fixed ``learning_rate`` and ``momentum`` below, with no
            ``rho`` and hence no damping adaptation, nor a ``gamma`` search (Martens' code, commented
            alternative).
        momentum_from_model: include the previous update ``delta_0`` in the model (section 7);
            False is section 6.4's rescaling only.
        learning_rate, momentum: the fixed ``alpha`` and ``mu`` when ``quadratic_model`` is False.
        model_fraction: fraction of the batch for the exact GGN products of the model (1 in
            Martens' code: "a value below 1 is dangerous"). 1/4 makes those products a quarter of
            their cost and the MNIST VAE faster for two minutes, but with ``lambda`` near 0 its
            ``(alpha, mu)`` can explode (``mu = 7.9`` on the CURVES VAE, the error from 67 to 254
            nats in one step; docs/vae-training.md), so it is not the default.
        reject_increase: also reject steps whose objective rose on the batch (evaluates
            ``h(theta + delta)`` every step; the paper only lets ``rho = -inf`` raise the damping).
        model_dtype: precision of the model's forward-mode products ``J u``: 'parameters' (the
            parameters' own dtype, the paper) or 'bfloat16' (a departure: parameters, inputs and
            directions rounded to bfloat16 for that pass, about 2x faster on CPUs with
            AVX512-BF16; the Gram entries are still summed in float64; see
            :func:`natgrad.optim.quadratic_model.ggn_gram`).
    """

    quadratic_model: bool = True
    momentum_from_model: bool = True
    learning_rate: float = 0.1
    momentum: float = 0.9
    model_fraction: float = 1.0
    reject_increase: bool = False
    model_dtype: str = "parameters"

    def __post_init__(self) -> None:
        require(isinstance(self.reject_increase, bool), "step.reject_increase", self.reject_increase, "true or false")
        require(isinstance(self.quadratic_model, bool), "step.quadratic_model", self.quadratic_model, "true or false")
        require(isinstance(self.momentum_from_model, bool), "step.momentum_from_model", self.momentum_from_model,
                "true or false")
        require_positive("step.learning_rate", self.learning_rate)
        require(_number(self.momentum) and 0 <= self.momentum < 1, "step.momentum", self.momentum, "a number in [0, 1)")
        require_fraction("step.model_fraction", self.model_fraction)
        require(self.model_dtype in MODEL_DTYPES, "step.model_dtype", self.model_dtype, ", ".join(MODEL_DTYPES))


@dataclass(frozen=True)
class CurvatureChoice:
    """Which matrix the representation estimates, and how (see :mod:`natgrad.curvature.choices`).

    Attributes:
        kind: 'full' (GGN of every loss term), 'decoder-only' (likelihood terms only; a VAE's naive
            K-FAC) or 'empirical' (empirical Fisher).
        estimator: 'sampled' (Monte-Carlo Fisher, one sample per example; the paper) or 'exact'
            (every column of the output-curvature square root; tiny models and tests).
    """

    kind: str = "full"
    estimator: str = "sampled"

    def __post_init__(self) -> None:
        parse_choice(CurvatureKind, "curvature.kind", self.kind)
        parse_choice(OutputGradientEstimator, "curvature.estimator", self.estimator)

    @property
    def kind_enum(self) -> CurvatureKind:
        return CurvatureKind(self.kind)

    @property
    def estimator_enum(self) -> OutputGradientEstimator:
        return OutputGradientEstimator(self.estimator)


#: Named starting points of the config groups: a preset gives the groups it names their values
#: (the others keep their defaults); the fields a caller sets are applied over them.
PRESETS: dict[str, dict[type, Any]] = {
    "natgrad": {},
    "paper": {DampingConfig: DampingConfig.paper()},
}


def check_preset(preset: str) -> str:
    """``preset`` if it names an entry of :data:`PRESETS`, else a ValueError listing them."""
    require(preset in PRESETS, "preset", preset, ", ".join(PRESETS))
    return preset


def coerce(cls: type[T], value: T | Mapping[str, Any] | None, field: str, preset: str = "natgrad") -> T:
    """``value`` as a ``cls`` instance, starting from ``preset``'s values of ``cls`` (:data:`PRESETS`).

    None gives the preset's values; a mapping sets its fields over them; a ``cls`` instance is
    used as given.

    Raises:
        ValueError: an unknown preset, a key that is not a field of ``cls`` (the message lists the
            fields), or the wrong type.
    """
    base = PRESETS[check_preset(preset)].get(cls) or cls()
    if value is None:
        return base
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        require(not unknown, field, unknown, f"keys among {sorted(names)}")
        return dataclasses.replace(base, **value)
    raise ValueError(f"Invalid {field}: {value!r}; allowed: a {cls.__name__} or a mapping of its fields")
