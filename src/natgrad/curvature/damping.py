r"""Factored Tikhonov damping of Kronecker blocks (Martens & Grosse 2015, section 6.3).

``A (x) G + lambda I`` is replaced by ``(A + pi gamma I) (x) (G + (gamma / pi) I)`` with
``gamma = sqrt(lambda)`` and the trace-norm ``pi = sqrt( (tr A / dim A) / (tr G / dim G) )``
(Martens' code and tensorflow/kfac ``compute_pi_tracenorm``; ``pi = 1`` when a trace is zero, as
there). The paper departs from exact damping here on purpose: the cross term
``pi gamma I (x) G + (gamma / pi) A (x) I`` is extra damping in the directions the factors favour.
Shared by block-diagonal and block-tridiagonal K-FAC.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def pi_trace_norm(input_factor: Tensor, gradient_factor: Tensor) -> float:
    """``pi = sqrt((tr A / dim A) / (tr G / dim G))``, or 1 when either trace is not positive."""
    a = float(torch.trace(input_factor)) / input_factor.shape[0]
    g = float(torch.trace(gradient_factor)) / gradient_factor.shape[0]
    if a <= 0.0 or g <= 0.0:
        return 1.0
    return math.sqrt(a / g)


def factored_shifts(input_factor: Tensor, gradient_factor: Tensor, damping: float) -> tuple[float, float]:
    """The diagonal shifts ``(pi gamma, gamma / pi)`` added to ``A`` and ``G`` for ``lambda = damping``."""
    gamma = math.sqrt(damping)
    pi = pi_trace_norm(input_factor, gradient_factor)
    return pi * gamma, gamma / pi


def add_identity(matrix: Tensor, shift: float) -> Tensor:
    """``matrix + shift * I``."""
    return matrix + shift * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
