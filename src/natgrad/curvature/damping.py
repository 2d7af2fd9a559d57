r"""Factored Tikhonov regularisation of Kronecker blocks (Martens & Grosse 2015, section 6.3).

Notation of :mod:`natgrad.curvature`. ``A (x) B + gamma^2 I`` is replaced by
``(A + pi gamma I) (x) (B + (gamma / pi) I)`` with ``gamma = sqrt(tikhonov)`` and the trace-norm
``pi = sqrt( (tr A / dim A) / (tr B / dim B) )`` (Martens' code and tensorflow/kfac
``compute_pi_tracenorm``; ``pi = 1`` when a trace is zero, as there). The paper departs from the
exact Tikhonov term here on purpose: the cross term ``pi gamma I (x) B + (gamma / pi) A (x) I`` is
extra regularisation in the directions the factors favour. Shared by block-diagonal and
block-tridiagonal K-FAC.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def pi_trace_norm(input_factor: Tensor, output_factor: Tensor) -> float:
    """``pi = sqrt((tr A / dim A) / (tr B / dim B))``, or 1 when either trace is not positive."""
    a = float(torch.trace(input_factor)) / input_factor.shape[0]
    b = float(torch.trace(output_factor)) / output_factor.shape[0]
    if a <= 0.0 or b <= 0.0:
        return 1.0
    return math.sqrt(a / b)


def factored_shifts(
    input_factor: Tensor, output_factor: Tensor, tikhonov: float
) -> tuple[float, float]:
    """The diagonal shifts ``(pi gamma, gamma / pi)`` added to ``A`` and ``B``, ``gamma =
    sqrt(tikhonov)``.
    """
    gamma = math.sqrt(tikhonov)
    pi = pi_trace_norm(input_factor, output_factor)
    return pi * gamma, gamma / pi


def add_identity(matrix: Tensor, shift: float) -> Tensor:
    """``matrix + shift * I``."""
    return matrix + shift * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
