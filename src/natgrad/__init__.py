"""natgrad: natural-gradient training of VAEs and deep autoencoders.

Layers, lowest first: distributions <- models <- losses/curvature <- optim <- experiments <- report
<- cli. The public API below is what a user needs for their own training loop.
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
from natgrad.losses import Loss, LossTerm, build_loss, cross_entropy, kl_term, likelihood_term
from natgrad.models import VAE, DeepAutoencoder
from natgrad.optim import PRONG, TONGA, DiagonalNaturalGradient, HessianFree, KFAC

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
    "OutputDistribution",
    "PRONG",
    "TONGA",
    "TridiagonalKFAC",
    "VAE",
    "build_loss",
    "cross_entropy",
    "kl_term",
    "likelihood_term",
]
