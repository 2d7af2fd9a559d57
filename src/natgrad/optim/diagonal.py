r"""Diagonal natural gradient: the shared step with a diagonal Fisher (sampled targets).

``C = diag((1/N) sum_n g_n (.) g_n)`` with ``g_n`` the gradient of example ``n`` back-propagated from a
target sampled from the model (Martens & Grosse 2015, section 5, applied to the diagonal; see
:mod:`natgrad.curvature.diagonal`), damped exactly: ``Delta = -(C + gamma^2 I)^{-1} grad``. Step size,
momentum, damping adaptation and amortisation are those of K-FAC (:mod:`natgrad.optim.base`), so the
two differ only in the curvature.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from natgrad.curvature.base import CurvatureConfig
from natgrad.curvature.diagonal import DiagonalCurvature
from natgrad.optim.base import NaturalGradientOptimizer, damping_fields
from natgrad.optim.config import CurvatureChoice, DampingConfig, ScheduleConfig, StepConfig, coerce


def curvature_config(choice: CurvatureChoice, schedule: ScheduleConfig) -> CurvatureConfig:
    """The representation's config: the chosen matrix and the schedule's EMA cap."""
    return CurvatureConfig(kind=choice.kind, estimator=choice.estimator, max_decay=schedule.ema_cap)


class DiagonalNaturalGradient(NaturalGradientOptimizer):
    """Natural gradient with a diagonal Fisher, on the shared step.

    Args:
        model: the module to train.
        damping, schedule, step, curvature: config groups or mappings of their fields
            (:mod:`natgrad.optim.config`); None gives the paper defaults.
        seed: seed of the sampled targets.

    Raises:
        ValueError: an invalid hyper-parameter (the message names it).
    """

    def __init__(
        self,
        model: nn.Module,
        damping: DampingConfig | Mapping[str, Any] | float | None = None,
        schedule: ScheduleConfig | Mapping[str, Any] | None = None,
        step: StepConfig | Mapping[str, Any] | None = None,
        curvature: CurvatureChoice | Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        schedule = coerce(ScheduleConfig, schedule, "schedule")
        choice = coerce(CurvatureChoice, curvature, "curvature")
        super().__init__(
            model,
            DiagonalCurvature(model, curvature_config(choice, schedule)),
            coerce(DampingConfig, damping_fields(damping), "damping"),
            schedule,
            coerce(StepConfig, step, "step"),
            seed,
        )
