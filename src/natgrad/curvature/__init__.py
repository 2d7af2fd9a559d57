"""Curvature: exact oracles (exact.py) and approximate representations behind one interface (base.py)."""
from natgrad.curvature.base import CurvatureConfig, CurvatureRepresentation
from natgrad.curvature.capture import CapturedBatch, capture
from natgrad.curvature.choices import CurvatureKind, OutputGradientEstimator
from natgrad.curvature.diagonal import DiagonalCurvature
from natgrad.curvature.kfac import KFAC, InverseMethod
from natgrad.curvature.kfac_tridiagonal import TridiagonalKFAC
from natgrad.curvature.layout import ParameterLayout

__all__ = [
    "KFAC",
    "CapturedBatch",
    "CurvatureConfig",
    "CurvatureKind",
    "CurvatureRepresentation",
    "DiagonalCurvature",
    "InverseMethod",
    "OutputGradientEstimator",
    "ParameterLayout",
    "TridiagonalKFAC",
    "capture",
]
