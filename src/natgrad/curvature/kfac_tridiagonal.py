r"""Block-tridiagonal K-FAC (Martens & Grosse 2015, section 4.3).

Layers ``i = 0 .. L-1`` form a chain (forward order; every Kronecker layer must be an ``nn.Linear``
on ``(N, d)`` inputs). Besides ``A_i, G_i`` (``kfac.py``) the statistics hold the cross moments
``AX_i = E[a_bar_i a_bar_{i+1}^T]`` and ``GX_i = E[g_i g_{i+1}^T]``, so the Kronecker-factored
Fisher has diagonal blocks ``F_ii = A_i (x) G_i`` and off-diagonal ``F_{i,i+1} = AX_i (x) GX_i``.

``F_hat`` is the matrix that equals those on the tridiagonal blocks and whose *inverse* is
block-tridiagonal: the covariance of a chain-structured Gaussian (directed, edges i+1 -> i), with

* ``Psi_i = F_{i,i+1} F_{i+1,i+1}^{-1} = (AX_i A_{i+1}^{-1}) (x) (GX_i G_{i+1}^{-1})``,
* ``Sigma_i = F_ii - Psi_i F_{i+1,i+1} Psi_i^T = A_i (x) G_i - C_i (x) D_i`` with
  ``C_i = AX_i A_{i+1}^{-1} AX_i^T``, ``D_i = GX_i G_{i+1}^{-1} GX_i^T`` (``C = D = 0`` for the last),
* ``F_hat^{-1} = Xi^T Lambda Xi``, ``Lambda = blockdiag(Sigma_i^{-1})``, ``Xi = I - Psi`` above the diagonal.

Efficient solve, all in matrix form (``Psi_i V = PsiG_i V PsiA_i^T``):
``U_i = V_i - Psi_i V_{i+1}``; ``W_i = Sigma_i^{-1} U_i``; ``Z_i = W_i - Psi_{i-1}^T W_{i-1}``.
``(A (x) G - C (x) D)^{-1}`` uses the paper's simultaneous diagonalisation: with Cholesky
``A = L L^T`` and ``L^{-1} C L^{-T} = E diag(s_A) E^T``, ``K_A = L^{-T} E`` (likewise ``K_G, s_G``),
``W = K_G [(K_G^T U K_A) / (1 - s_G s_A^T)] K_A^T``. Positive-definite damped joint moments give
``0 <= s < 1``, so no clipping is applied (Martens' code clips ``s <= 1`` as a safeguard).

Damping (section 6.3, shared with block-diagonal K-FAC via :meth:`KFAC.damped_layer_factors`):
only ``A_i`` and ``G_i`` are damped, the cross moments are not. Undamped, ``Sigma_i`` can be singular
(a linear code layer makes ``g_i`` a linear function of ``g_{i+1}`` and both inputs carry the bias
1, so ``s_A = s_G = 1``); :meth:`solve` therefore needs ``damping > 0`` there, while :meth:`matvec`
and :meth:`to_dense` (``F_hat = Xi^{-1} blockdiag(Sigma_i) Xi^{-T}`` from dense Kronecker
products, independent of the efficient algorithm) only invert ``A_{i+1}, G_{i+1}``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from natgrad.curvature.base import CurvatureConfig
from natgrad.curvature.capture import CapturedBatch, cross_gradient_factor, cross_input_factor
from natgrad.curvature.kfac import KFAC


@dataclass(frozen=True)
class _ChainBlock:
    """Everything about layer ``i`` that the chain products need, at one damping."""

    a: Tensor  # damped A_i: (d_in, d_in)
    g: Tensor  # damped G_i: (d_out, d_out)
    c: Tensor  # C_i: (d_in, d_in), zero for the last layer
    d: Tensor  # D_i: (d_out, d_out)
    psi_a: Tensor | None  # AX_i A_{i+1}^{-1}: (d_in_i, d_in_{i+1}); None for the last layer
    psi_g: Tensor | None  # GX_i G_{i+1}^{-1}: (d_out_i, d_out_{i+1})
    k_a: Tensor | None  # K_A: (d_in, d_in); None until simultaneously diagonalised
    k_g: Tensor | None  # K_G: (d_out, d_out)
    denominator: Tensor | None  # 1 - s_G s_A^T: (d_out, d_in)


def simultaneous_diagonalisation(a: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``(K, s)`` with ``K^T a K = I`` and ``K^T c K = diag(s)`` for symmetric PD ``a``, symmetric ``c``."""
    chol = torch.linalg.cholesky(a)
    half = torch.linalg.solve_triangular(chol, c, upper=False)
    whitened = torch.linalg.solve_triangular(chol, half.T, upper=False)
    # eigh in float64 (cast back): float32 LAPACK fails to converge on MNIST-sized factors.
    s, e = (t.to(a.dtype) for t in torch.linalg.eigh((0.5 * (whitened + whitened.T)).double()))
    return torch.linalg.solve_triangular(chol.T, e, upper=True), s


class TridiagonalKFAC(KFAC):
    """Block-tridiagonal K-FAC over a chain of Linear layers; other parameters diagonal.

    Raises:
        ValueError: a Kronecker layer is not an nn.Linear (Conv2d has no tridiagonal variant here).
    """

    def __init__(self, model: nn.Module, config: CurvatureConfig | None = None) -> None:
        super().__init__(model, config, inverse_method="inverse")
        convs = [layer.name for layer in self.layout.layers if not isinstance(layer.module, nn.Linear)]
        if convs:
            raise ValueError(f"TridiagonalKFAC supports nn.Linear layers only; got non-Linear layers {convs}")

    def _batch_statistics(self, batch: CapturedBatch) -> dict[str, Tensor]:
        stats = super()._batch_statistics(batch)
        for i, (lower, upper) in enumerate(zip(batch.layers[:-1], batch.layers[1:])):
            if lower.inputs.shape[1] != 1 or upper.inputs.shape[1] != 1:
                raise ValueError(
                    f"TridiagonalKFAC needs (N, d) inputs at every layer; layer {self.layout.layers[i].name!r} "
                    f"or its successor saw {lower.inputs.shape[1]} / {upper.inputs.shape[1]} locations per example "
                    "(a VAE on the importance-weighted bound decodes k samples per example: use block-diagonal K-FAC)"
                )
            stats[f"AX{i}"] = cross_input_factor(lower, upper, batch.batch_size)
            stats[f"GX{i}"] = cross_gradient_factor(lower, upper, batch.batch_size)
        return stats

    def _factorise(self, frozen: dict[str, Tensor]) -> dict[str, Any]:
        return {}

    def _chain(self, frozen: dict[str, Tensor], damping: float) -> list[_ChainBlock]:
        """Damped factors, ``Psi`` and ``C, D`` per layer (``k_a, k_g, denominator`` left empty)."""
        n = len(self.layout.layers)
        damped = [self.damped_layer_factors(frozen, i, damping) for i in range(n)]
        blocks = []
        for i, (a, g) in enumerate(damped):
            if i + 1 < n:
                a_next, g_next = damped[i + 1]
                psi_a = torch.linalg.solve(a_next, frozen[f"AX{i}"].T).T
                psi_g = torch.linalg.solve(g_next, frozen[f"GX{i}"].T).T
                c, d = psi_a @ frozen[f"AX{i}"].T, psi_g @ frozen[f"GX{i}"].T
            else:
                psi_a = psi_g = None
                c, d = torch.zeros_like(a), torch.zeros_like(g)
            blocks.append(_ChainBlock(a, g, c, d, psi_a, psi_g, None, None, None))
        return blocks

    def _damped_factors(self, frozen: dict[str, Tensor], damping: float) -> list[_ChainBlock]:
        blocks = []
        for b in self._chain(frozen, damping):
            k_a, s_a = simultaneous_diagonalisation(b.a, b.c)
            k_g, s_g = simultaneous_diagonalisation(b.g, b.d)
            blocks.append(replace(b, k_a=k_a, k_g=k_g, denominator=1.0 - torch.outer(s_g, s_a)))
        return blocks

    def _solve(self, vectors: list[Tensor], damping: float, damped: list[_ChainBlock]) -> list[Tensor]:
        layers = self.layout.layers
        v = [self.layout.layer_matrix(vectors, layer) for layer in layers]
        u = [vi if b.psi_g is None else vi - b.psi_g @ v[i + 1] @ b.psi_a.T for i, (vi, b) in enumerate(zip(v, damped))]
        w = [b.k_g @ ((b.k_g.T @ ui @ b.k_a) / b.denominator) @ b.k_a.T for ui, b in zip(u, damped)]
        z = [w[0]] + [w[i] - damped[i - 1].psi_g.T @ w[i - 1] @ damped[i - 1].psi_a for i in range(1, len(w))]
        out = list(vectors)
        for layer, zi in zip(layers, z):
            self.layout.scatter_layer_matrix(zi, layer, out)
        self._other_solve(vectors, out, self._require_frozen(), damping)
        return out

    def _matvec(self, vectors: list[Tensor], frozen: dict[str, Tensor]) -> list[Tensor]:
        """``F_hat v = Xi^{-1} Sigma Xi^{-T} v`` (undamped; needs invertible ``A_i, G_i`` for ``i >= 1``)."""
        blocks = self._chain(frozen, 0.0)
        layers = self.layout.layers
        v = [self.layout.layer_matrix(vectors, layer) for layer in layers]
        x = [v[0]]
        for i in range(1, len(v)):
            x.append(v[i] + blocks[i - 1].psi_g.T @ x[i - 1] @ blocks[i - 1].psi_a)
        y = [b.g @ xi @ b.a - b.d @ xi @ b.c for xi, b in zip(x, blocks)]
        z = list(y)
        for i in range(len(z) - 2, -1, -1):
            z[i] = y[i] + blocks[i].psi_g @ z[i + 1] @ blocks[i].psi_a.T
        out = list(vectors)
        for layer, zi in zip(layers, z):
            self.layout.scatter_layer_matrix(zi, layer, out)
        for j in self.layout.other:
            out[j] = vectors[j] * frozen[f"D{j}"]
        return out

    def _dense(self, frozen: dict[str, Tensor], damping: float | None) -> Tensor:
        """``F_hat = Xi^{-1} blockdiag(Sigma_i) Xi^{-T}`` from dense Kronecker products."""
        blocks = self._chain(frozen, damping or 0.0)
        sizes = [b.a.shape[0] * b.g.shape[0] for b in blocks]
        starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        xi = torch.eye(starts[-1], dtype=blocks[0].a.dtype, device=blocks[0].a.device)
        sigma = torch.zeros_like(xi)
        for i, b in enumerate(blocks):
            s = slice(starts[i], starts[i + 1])
            sigma[s, s] = torch.kron(b.g, b.a) - torch.kron(b.d, b.c)
            if b.psi_g is not None:
                xi[s, starts[i + 1] : starts[i + 2]] = -torch.kron(b.psi_g, b.psi_a)
        xi_inv = torch.linalg.inv(xi)
        chain = xi_inv @ sigma @ xi_inv.T
        idx = torch.cat([self.layout.layer_indices(layer) for layer in self.layout.layers])
        dense = self._empty_dense(frozen)
        dense[idx.unsqueeze(1), idx] = chain
        self._other_dense(dense, frozen, damping)
        return dense
