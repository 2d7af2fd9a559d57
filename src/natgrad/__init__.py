"""natgrad: natural-gradient training of VAEs and deep autoencoders.

Layers, lowest first: distributions <- models <- losses/curvature (objectives: iwae) <- optim <-
experiments <- report <- cli. The public API below is what a user needs for their own training loop.
"""

from natgrad.curvature import (
    BlockDiagonalKFAC,
    CurvatureConfig,
    CurvatureKind,
    CurvatureRepresentation,
    DiagonalCurvature,
    TridiagonalKFAC,
)
from natgrad.distributions import (
    Bernoulli,
    Categorical,
    DiagonalGaussianPosterior,
    Gaussian,
    GaussianLearnedVariance,
    OutputDistribution,
)
from natgrad.iwae import build_iwae_loss
from natgrad.losses import Loss, LossTerm, build_loss, cross_entropy, kl_term, likelihood_term
from natgrad.models import VAE, DeepAutoencoder
from natgrad.objectives import Objective, build_objective_loss
from natgrad.optim import KFAC, PRONG, TONGA, DiagonalNaturalGradient, HessianFree

__version__ = "0.1.0"
__all__ = [
    "Bernoulli",
    "BlockDiagonalKFAC",
    "Categorical",
    "CurvatureConfig",
    "CurvatureKind",
    "CurvatureRepresentation",
    "DeepAutoencoder",
    "DiagonalCurvature",
    "DiagonalGaussianPosterior",
    "DiagonalNaturalGradient",
    "Gaussian",
    "GaussianLearnedVariance",
    "HessianFree",
    "KFAC",
    "Loss",
    "LossTerm",
    "Objective",
    "OutputDistribution",
    "PRONG",
    "TONGA",
    "TridiagonalKFAC",
    "VAE",
    "build_iwae_loss",
    "build_loss",
    "build_objective_loss",
    "cross_entropy",
    "kl_term",
    "likelihood_term",
]
