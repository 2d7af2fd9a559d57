r"""Parameter directions for the perturbation-norm study, from metric-vector products only.

* ``steepest_descent_direction``: ``d_M = (G_M + lambda I)^{-1} g``, the steepest-descent direction
  of the metric ``G_M`` (the natural gradient when ``G_M = F``), by conjugate gradient
  (:func:`natgrad.optim.cg.conjugate_gradient`, Martens 2010 section 4.4 stopping rule) with the
  damping ``lambda = relative_damping * tr(G_M)/P`` -- relative, so that a metric and any positive
  multiple of it give the same direction.
* ``top_eigenvectors``: the leading eigenpairs of ``G_M`` by Lanczos (ARPACK ``eigsh``) on products.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor

from natgrad.optim.cg import CGResult, conjugate_gradient

Matvec = Callable[[Tensor], Tensor]


def unit(v: Tensor) -> Tensor:
    """``v / |v|``.

    Raises:
        ValueError: for a zero vector.
    """
    norm = v.norm()
    if not norm > 0:
        raise ValueError("cannot normalise a zero direction")
    return v / norm


def mean_eigenvalue(
    quadratic_form: Callable[[Tensor], Tensor],
    dim: int,
    probes: int,
    generator: torch.Generator,
    dtype: torch.dtype,
) -> float:
    """Hutchinson estimate of ``tr(G)/P = E[u^T G u]`` over ``u ~ N(0, I/P)``."""
    total = 0.0
    for _ in range(probes):
        u = torch.randn(dim, generator=generator, dtype=dtype) / dim**0.5
        total += float(quadratic_form(u))
    return total / probes


def steepest_descent_direction(
    matvec: Matvec, gradient: Tensor, damping: float, max_iterations: int
) -> CGResult:
    """``(G + damping I)^{-1} gradient`` by CG from zero; the result says why CG stopped."""
    return conjugate_gradient(
        lambda v: matvec(v) + damping * v,
        gradient,
        torch.zeros_like(gradient),
        max_iterations=max_iterations,
    )


def top_eigenvectors(
    matvec: Matvec, dim: int, count: int, dtype: torch.dtype, seed: int = 0
) -> tuple[np.ndarray, Tensor]:
    """The ``count`` largest eigenvalues (descending) and unit eigenvectors ``(count, P)`` of
    ``G``.
    """
    operator = LinearOperator(
        (dim, dim),
        matvec=lambda v: (
            matvec(torch.from_numpy(np.asarray(v, dtype=np.float64).ravel()).to(dtype))
            .detach()
            .double()
            .numpy()
        ),
        dtype=np.float64,
    )
    start = np.random.default_rng(seed).standard_normal(dim)
    values, vectors = eigsh(operator, k=count, which="LA", v0=start, tol=1e-6)
    order = np.argsort(values)[::-1]
    return values[order], torch.from_numpy(vectors[:, order].T.copy()).to(dtype)
