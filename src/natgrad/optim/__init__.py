"""Natural-gradient optimizers (torch.optim.Optimizer subclasses taking a Loss-returning
closure).
"""

from natgrad.optim.base import NaturalGradientOptimizer
from natgrad.optim.cg import CGResult, conjugate_gradient
from natgrad.optim.config import DampingConfig, ModelDtype, ScheduleConfig, StepConfig
from natgrad.optim.diagonal import DiagonalNaturalGradient
from natgrad.optim.hessian_free import HessianFree, HessianFreeConfig
from natgrad.optim.kfac import KFAC, Structure, exponential_batch_size
from natgrad.optim.prong import PRONG
from natgrad.optim.record import StepRecord
from natgrad.optim.tonga import TONGA

__all__ = [
    "KFAC",
    "CGResult",
    "DampingConfig",
    "DiagonalNaturalGradient",
    "HessianFree",
    "HessianFreeConfig",
    "ModelDtype",
    "NaturalGradientOptimizer",
    "PRONG",
    "ScheduleConfig",
    "StepConfig",
    "StepRecord",
    "Structure",
    "TONGA",
    "conjugate_gradient",
    "exponential_batch_size",
]
