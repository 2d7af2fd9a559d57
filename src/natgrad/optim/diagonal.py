r"""Diagonal natural gradient: the shared step with a diagonal Fisher (sampled targets).

``C = diag((1/N) sum_n g_n (.) g_n)`` with ``g_n`` the gradient of example ``n`` back-propagated
from a target sampled from the model (Martens & Grosse 2015, section 5, applied to the diagonal; see
:mod:`natgrad.curvature.diagonal`), damped exactly: ``Delta = -(C + gamma^2 I)^{-1} grad``. Step
size, momentum, damping adaptation and amortisation are those of K-FAC (:mod:`natgrad.optim.base`),
so the two differ only in the curvature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from natgrad.curvature.choices import CurvatureConfig
from natgrad.curvature.diagonal import DiagonalCurvature
from natgrad.optim.base import NaturalGradientOptimizer, damping_fields
from natgrad.optim.config import DampingConfig, ScheduleConfig, StepConfig, coerce


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
        curvature: CurvatureConfig | Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            DiagonalCurvature(model, coerce(CurvatureConfig, curvature, "curvature")),
            coerce(DampingConfig, damping_fields(damping), "damping"),
            coerce(ScheduleConfig, schedule, "schedule"),
            coerce(StepConfig, step, "step"),
            seed,
        )
