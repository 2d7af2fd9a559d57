"""Divergences between output distributions, their local metrics, and the perturbation-norm
study.
"""

from natgrad.geometry.divergences import (
    DIVERGENCES,
    KL,
    MMD,
    Alpha,
    ChiSquared,
    Divergence,
    FDivergence,
    Jeffreys,
    JensenShannon,
    NoLocalMetricError,
    ReverseKL,
    SquaredHellinger,
    TotalVariation,
    Wasserstein2,
    get_divergence,
)
from natgrad.geometry.pullback import PulledBackMetric, mean_divergence, model_outputs

__all__ = [
    "Alpha",
    "ChiSquared",
    "DIVERGENCES",
    "Divergence",
    "FDivergence",
    "Jeffreys",
    "JensenShannon",
    "KL",
    "MMD",
    "NoLocalMetricError",
    "PulledBackMetric",
    "ReverseKL",
    "SquaredHellinger",
    "TotalVariation",
    "Wasserstein2",
    "get_divergence",
    "mean_divergence",
    "model_outputs",
]
