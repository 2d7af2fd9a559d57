r"""Diagonal Fisher / GGN: ``C = diag((1/N) sum_{k,n} g_{k,n} (.) g_{k,n})``.

``g_{k,n}`` is the per-example gradient of ``<s_{k,n}, z_n(theta)>`` for the back-propagated
output-side vectors ``s`` of :mod:`natgrad.curvature.capture`: sampled (Monte-Carlo Fisher
diagonal, Martens & Grosse 2015 section 5 estimator applied to the diagonal), square roots
(then ``C`` is exactly ``diag(G)``) or the loss gradient (empirical Fisher diagonal). For a
Kronecker layer the per-example gradient is ``sum_t g_{n,t} a_bar_{n,t}^T`` from the captured
statistics (one batched einsum); other parameters come from the capture's vmap pass.

Damping is exact: ``M(lambda) = C + lambda I``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from natgrad.curvature.base import CurvatureRepresentation
from natgrad.curvature.capture import CapturedBatch, per_example_layer_gradients


class DiagonalCurvature(CurvatureRepresentation):
    """Diagonal of the curvature, one tensor per parameter (see the module docstring)."""

    def describe(self) -> str:
        return self.layout.describe_table(block="diagonal")

    def _batch_statistics(self, batch: CapturedBatch) -> dict[str, Tensor]:
        diagonal = [None] * len(self.params)
        for layer, record in zip(self.layout.layers, batch.layers):
            if record.inputs.shape[1] == 1:  # one location: (g a^T)^2 = g^2 (a^2)^T, no (N, d_out, d_in) tensor
                squares = torch.einsum("knto,nti->oi", record.output_grads.pow(2), record.inputs.pow(2))
            else:
                squares = per_example_layer_gradients(record).pow(2).sum((0, 1))
            self.layout.scatter_layer_matrix(squares / batch.batch_size, layer, diagonal)
        for index, value in batch.other_diagonal.items():
            diagonal[index] = value
        return {str(i): d for i, d in enumerate(diagonal)}

    def _diagonal(self, frozen: dict[str, Tensor]) -> list[Tensor]:
        return [frozen[str(i)] for i in range(len(self.params))]

    def _damped_factors(self, frozen: dict[str, Tensor], damping: float) -> Any:
        return [d + damping for d in self._diagonal(frozen)]

    def _solve(self, vectors: list[Tensor], damping: float, damped: Any) -> list[Tensor]:
        return [v / d for v, d in zip(vectors, damped)]

    def _matvec(self, vectors: list[Tensor], frozen: dict[str, Tensor]) -> list[Tensor]:
        return [v * d for v, d in zip(vectors, self._diagonal(frozen))]

    def _dense(self, frozen: dict[str, Tensor], damping: float | None) -> Tensor:
        flat = self.layout.flatten(self._diagonal(frozen))
        return (flat + (damping or 0.0)).diag()
