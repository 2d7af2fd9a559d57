r"""Block-diagonal K-FAC (Martens & Grosse 2015, sections 3, 4.2, 5 and 6.3; KFC for Conv2d).

Notation as in :mod:`natgrad.curvature.capture`: per Kronecker layer ``i`` the input factor
``A_i = E[a_bar a_bar^T]`` and the gradient factor ``G_i = E[g g^T]``, so the layer's curvature block
is ``F_i ~ A_i (x) G_i`` (paper, column-major ``vec``; in natgrad's row-major flattening of
``W_bar = [W, b]`` the block is ``G_i (x) A_i``). The approximation is block-diagonal over layers
(section 4.2); *other* parameters get a diagonal block (``diagonal.py``'s estimator).

Solve with damping ``lambda`` (section 6.3, :mod:`natgrad.curvature.damping`):
``U_i = (G_i + gamma/pi_i I)^{-1} V_i (A_i + pi_i gamma I)^{-1}`` with ``(A (x) B) vec(X) = vec(B X A^T)``.
Two ways (``inverse_method``):

* ``"eigen"``: at :meth:`refresh` eigendecompose ``A = Q_A diag(d_A) Q_A^T``, ``G = Q_G diag(d_G) Q_G^T``;
  then any damping costs two matrix products per side,
  ``U = Q_G [(Q_G^T V Q_A) / ((d_G + gamma/pi)(d_A + pi gamma)^T)] Q_A^T``.
* ``"inverse"``: explicit Cholesky inverses of the damped factors, recomputed per damping.

Both give the same matrix ``M(lambda) = (A + pi gamma I) (x) (G + gamma/pi I)`` per layer and
``diag + lambda`` for other parameters, which :meth:`to_dense` returns.

``solve_dtype`` (``"inverse"`` only) is a departure from the paper, off by default: ``"bfloat16"``
stores the damped inverses in bfloat16 and multiplies in bfloat16 (float32 accumulation inside the
product, result cast back to the gradient's dtype). The two products per layer are the solve's whole
cost, ``sum_i d_out d_in (d_out + d_in)`` multiply-adds, and on CPUs with AVX512-BF16 they run
faster in bfloat16 (timings: ``benchmarks/results/step_cost.md``); the price is a relative error of about ``2^-8`` per
entry of the preconditioned gradient (8-bit mantissa), which the quadratic model's exact ``alpha`` and
``mu`` absorb in scale but not in direction. The factors, their moving averages and the inverses'
Cholesky factorisation stay in float32/float64.
"""
from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from natgrad.curvature.base import CurvatureRepresentation
from natgrad.curvature.capture import CapturedBatch, gradient_factor, input_factor
from natgrad.curvature.choices import CurvatureConfig
from natgrad.curvature.damping import add_identity, factored_shifts
from natgrad.validation import parse_choice, require


class InverseMethod(str, Enum):
    """How the damped Kronecker factors are inverted (module docstring)."""

    EIGEN = "eigen"
    INVERSE = "inverse"


class SolveDtype(str, Enum):
    """Precision of the damped solve's matrix products (see module docstring)."""

    FACTORS = "factors"  # the factors' own dtype
    BFLOAT16 = "bfloat16"


def _spd_inverse(matrix: Tensor) -> Tensor:
    """Inverse of a damped factor, through Cholesky in float64 (cast back).

    Done once per refresh or damping change, not per step; float32 Cholesky fails on the nearly
    singular MNIST input factor, as float32 eigh does.
    """
    return torch.cholesky_inverse(torch.linalg.cholesky(matrix.double())).to(matrix.dtype)


class BlockDiagonalKFAC(CurvatureRepresentation):
    """Block-diagonal Kronecker-factored curvature over Linear/Conv2d layers, diagonal elsewhere.

    Args:
        model: the module whose trainable parameters are the coordinates.
        config: curvature kind, estimator and EMA cap.
        inverse_method: ``"inverse"`` (default: explicit inverses of the damped factors, rebuilt per
            damping value) or ``"eigen"`` (eigendecompositions at each refresh; any damping is then
            cheap, but a solve costs four matrix products per layer instead of two).
        solve_dtype: ``"factors"`` (default: the factors' own dtype) or ``"bfloat16"`` (a departure,
            ``"inverse"`` only; see module docstring).

    Raises:
        ValueError: unknown ``inverse_method`` or ``solve_dtype``, or bfloat16 with ``"eigen"``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: CurvatureConfig | None = None,
        inverse_method: InverseMethod | str = InverseMethod.INVERSE,
        solve_dtype: SolveDtype | str = SolveDtype.FACTORS,
    ) -> None:
        super().__init__(model, config)
        self.inverse_method = parse_choice(InverseMethod, "inverse_method", inverse_method)
        self.solve_dtype = parse_choice(SolveDtype, "solve_dtype", solve_dtype)
        require(self.solve_dtype is not SolveDtype.BFLOAT16 or self.inverse_method is InverseMethod.INVERSE,
                "solve_dtype", self.solve_dtype.value, "'factors' unless inverse_method is 'inverse'")

    # ---- statistics -------------------------------------------------------------------------
    def _batch_statistics(self, batch: CapturedBatch) -> dict[str, Tensor]:
        stats = {}
        for i, record in enumerate(batch.layers):
            stats[f"A{i}"] = input_factor(record, batch.batch_size)
            stats[f"G{i}"] = gradient_factor(record, batch.batch_size)
        stats.update({f"D{j}": d for j, d in batch.other_diagonal.items()})
        return stats

    def _factorise(self, frozen: dict[str, Tensor]) -> dict[str, Any]:
        if self.inverse_method is not InverseMethod.EIGEN:
            return {}
        # eigh in float64: float32 LAPACK fails to converge on MNIST's input factor (many repeated
        # zero eigenvalues from constant pixels); the results are cast back.
        return {
            key: tuple(t.to(frozen[key].dtype) for t in torch.linalg.eigh(frozen[key].double()))
            for i in range(len(self.layout.layers))
            for key in (f"A{i}", f"G{i}")
        }

    # ---- shared with the tridiagonal variant --------------------------------------------------
    def layer_factors(self, frozen: dict[str, Tensor], i: int) -> tuple[Tensor, Tensor]:
        """``(A_i, G_i)`` of the frozen statistics."""
        return frozen[f"A{i}"], frozen[f"G{i}"]

    def damped_layer_factors(self, frozen: dict[str, Tensor], i: int, damping: float) -> tuple[Tensor, Tensor]:
        """``(A_i + pi gamma I, G_i + gamma/pi I)`` (section 6.3)."""
        a, g = self.layer_factors(frozen, i)
        shift_a, shift_g = factored_shifts(a, g, damping)
        return add_identity(a, shift_a), add_identity(g, shift_g)

    def _other_solve(self, vectors: list[Tensor], out: list[Tensor], frozen: dict[str, Tensor], damping: float) -> None:
        for j in self.layout.other:
            out[j] = vectors[j] / (frozen[f"D{j}"] + damping)

    def _other_dense(self, dense: Tensor, frozen: dict[str, Tensor], damping: float | None) -> None:
        idx = self.layout.other_indices()
        if idx.numel():
            diag = torch.cat([frozen[f"D{j}"].reshape(-1) for j in self.layout.other])
            dense[idx, idx] = diag + (damping or 0.0)

    def _empty_dense(self, frozen: dict[str, Tensor]) -> Tensor:
        ref = next(iter(frozen.values()))
        return torch.zeros(self.layout.dimension, self.layout.dimension, dtype=ref.dtype, device=ref.device)

    # ---- block-diagonal products --------------------------------------------------------------
    def _damped_factors(self, frozen: dict[str, Tensor], damping: float) -> Any:
        if self.inverse_method is InverseMethod.EIGEN:
            shifts = [factored_shifts(*self.layer_factors(frozen, i), damping) for i in range(len(self.layout.layers))]
            return shifts
        low = self.solve_dtype is SolveDtype.BFLOAT16
        return [
            tuple(_spd_inverse(f).to(torch.bfloat16 if low else f.dtype)
                  for f in self.damped_layer_factors(frozen, i, damping))
            for i in range(len(self.layout.layers))
        ]

    def _solve_layer(self, v: Tensor, i: int, damped: Any) -> Tensor:
        if self.inverse_method is InverseMethod.INVERSE:
            a_inv, g_inv = damped[i]
            return (g_inv @ v.to(g_inv.dtype) @ a_inv).to(v.dtype)
        (d_a, q_a), (d_g, q_g) = self._factors[f"A{i}"], self._factors[f"G{i}"]
        shift_a, shift_g = damped[i]
        rotated = q_g.T @ v @ q_a
        return q_g @ (rotated / torch.outer(d_g + shift_g, d_a + shift_a)) @ q_a.T

    def _solve(self, vectors: list[Tensor], damping: float, damped: Any) -> list[Tensor]:
        out = list(vectors)
        frozen = self._require_frozen()
        for i, layer in enumerate(self.layout.layers):
            u = self._solve_layer(self.layout.layer_matrix(vectors, layer), i, damped)
            self.layout.scatter_layer_matrix(u, layer, out)
        self._other_solve(vectors, out, frozen, damping)
        return out

    def _matvec(self, vectors: list[Tensor], frozen: dict[str, Tensor]) -> list[Tensor]:
        out = list(vectors)
        for i, layer in enumerate(self.layout.layers):
            a, g = self.layer_factors(frozen, i)
            self.layout.scatter_layer_matrix(g @ self.layout.layer_matrix(vectors, layer) @ a, layer, out)
        for j in self.layout.other:
            out[j] = vectors[j] * frozen[f"D{j}"]
        return out

    def _dense(self, frozen: dict[str, Tensor], damping: float | None) -> Tensor:
        dense = self._empty_dense(frozen)
        for i, layer in enumerate(self.layout.layers):
            a, g = self.layer_factors(frozen, i) if damping is None else self.damped_layer_factors(frozen, i, damping)
            idx = self.layout.layer_indices(layer)
            dense[idx.unsqueeze(1), idx] = torch.kron(g, a)
        self._other_dense(dense, frozen, damping)
        return dense
