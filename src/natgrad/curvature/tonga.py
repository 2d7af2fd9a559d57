r"""TONGA: a low-rank (per block) model of the covariance of per-example gradients.

Le Roux, Manzagol & Bengio, "Topmoumoute online natural gradient algorithm", NIPS 2007 (publ. 2008),
section 5 of ../shared/PAPERS.md. Notation of :mod:`natgrad.curvature`, and: ``g_n`` the gradient
of example ``n``'s loss, ``m`` the number of examples per update, ``d`` the discount
(``config.discount``, the paper's ``gamma``), ``k`` the rank kept per block, ``b`` the number of
updates between eigendecompositions. The optimizer's Tikhonov term ``gamma^2`` (tied to
``lambda + eta``) is TONGA's damping.

The matrix (per block, see below) is kept as ``C = X X^T`` with ``X`` of shape ``(n_b, r)``, never
as a dense ``n_b x n_b`` matrix:

* update (amortised online algorithm, paper p. 5): ``X <- [sqrt(w) X, sqrt((1-w)/m) [s_1 ...
  s_m]]``, i.e. ``C <- w C + (1 - w) S`` with ``S = (1/m) sum_n s_n s_n^T`` the batch statistic:
  ``s_n = g_n`` (uncentred, the paper's online ``C_t = d C_{t-1} + g g^T``) or
  ``s_n = g_n - mean(g)`` (centred, the paper's definition of the gradient covariance);
* the Gram matrix ``X^T X`` is kept alongside and grown by the paper's block formula;
* every ``b`` updates (``refresh``): eigendecompose the Gram
  ``X^T X = V D V^T``; the eigenvectors of ``C`` are ``X V D^{-1/2}`` with eigenvalues ``D``; keep
  the top ``k``: ``X <- X V_{:, :k}`` (so ``X X^T = sum_{j<=k} d_j u_j u_j^T``), Gram ``<-
      diag(D_{:k})``;
* solve (Woodbury / push-through):
  ``(X X^T + gamma^2 I)^{-1} v = (v - X (X^T X + gamma^2 I)^{-1} X^T v) / gamma^2``,
  cost ``O(n r + r^3)`` per block.

Departures from the paper, on purpose:

* the decay ``w = min(1 - 1/t, d)`` at update ``t`` (an exponential moving average, as K-FAC's
  factors): the paper's ``C_t = d C_{t-1} + g g^T`` is ``1/(1-d)`` times ours in steady state. The
  direction ``C^{-1} g`` does not change; only the scale of ``gamma^2`` does, which is then
  comparable to K-FAC's. The first update uses the batch alone.
* The centred variant centres each batch on its own mean (the paper's estimator of the
  covariance, applied to the batch); the uncentred one is the empirical Fisher of the batch.
* The paper adds one gradient per step; here each update adds ``m`` per-example gradients
  (``examples_per_update`` of the batch), computed together with ``torch.func.vmap``.
* The L2 penalty's gradient ``eta theta`` is not part of ``g_n`` (it has no variance).

Block structure (``blocks``): ``"unit"`` - the paper's block-diagonal variant, one block per unit
of every Linear/Conv2d (its incoming weights and its bias, after Collobert 2004); ``"layer"`` - one
block per Linear/Conv2d (weight and bias); ``"none"`` - the plain low-rank TONGA over all
parameters. Other parameters (see :mod:`natgrad.curvature.layout`) get one block per tensor. Each
block keeps its own rank-``k`` factor. Blocks of one layer are batched (``(d_out, d_in + 1, r)``),
so the per-unit variant costs batched ``eigh`` on ``(d_out, r, r)`` Gram matrices, no Python loop
over units.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from natgrad.curvature.base import CurvatureRepresentation
from natgrad.curvature.exact import per_example_gradients
from natgrad.curvature.layout import ParameterLayout
from natgrad.losses import Loss
from natgrad.validation import in_unit_interval, is_integer, parse_choice, require


class Blocks(str, Enum):
    """TONGA's block structure (module docstring)."""

    UNIT = (
        "unit"  # one block per unit of every Kronecker layer (the paper's block-diagonal variant)
    )
    LAYER = "layer"  # one block per Kronecker layer
    NONE = "none"  # one block over all parameters (plain low-rank TONGA)


@dataclass(frozen=True)
class TongaConfig:
    """Hyper-parameters of the TONGA curvature.

    Attributes:
        rank: ``k``, eigenvectors kept per block at each eigendecomposition (PLearn 10, climin 5).
        discount: ``d``, the cap of the moving-average decay (the paper's ``gamma``; PLearn 0.99,
            climin 0.995).
        centred: centre each batch's gradients on their mean (the paper's covariance) instead of
            the uncentred second moment of the online algorithm.
        blocks: a :class:`Blocks` value: ``"unit"`` (default), ``"layer"`` or ``"none"``.
        examples_per_update: ``m``, per-example gradients used per update (the first ``m`` of
            the batch); memory is ``m`` times the number of parameters.

    Raises:
        ValueError: a field is out of range; the message names it and the allowed values.
    """

    rank: int = 10
    discount: float = 0.99
    centred: bool = False
    blocks: Blocks | str = Blocks.UNIT
    examples_per_update: int = 8

    def __post_init__(self) -> None:
        for name in ("rank", "examples_per_update"):
            value = getattr(self, name)
            require(is_integer(value) and value >= 1, f"tonga.{name}", value, "an integer >= 1")
        require(
            in_unit_interval(self.discount), "tonga.discount", self.discount, "a number in [0, 1)"
        )
        require(isinstance(self.centred, bool), "tonga.centred", self.centred, "true or false")
        object.__setattr__(self, "blocks", parse_choice(Blocks, "tonga.blocks", self.blocks))
        require(
            not self.centred or self.examples_per_update >= 2,
            "tonga.examples_per_update",
            self.examples_per_update,
            ">= 2 with centred = true (a centred batch of one example is zero)",
        )


@dataclass(frozen=True)
class _BlockGroup:
    """Blocks of equal size ``n_b`` stacked as ``(B, n_b)``: a map from parameter tensors and back.

    ``per_unit`` groups are one Kronecker layer split by output unit: row ``j`` is
    ``[W[j, :], b[j]]`` (a Conv2d weight flattened per output channel). Other groups concatenate
    the flattened parameters ``indices`` into one block.
    """

    indices: tuple[int, ...]
    per_unit: bool

    def gather(self, vectors: Sequence[Tensor], lead: tuple[int, ...] = ()) -> Tensor:
        """``(*lead, B, n_b)`` from the per-parameter tensors ``vectors`` (each ``(*lead,
        *shape)``).
        """
        parts = [vectors[i] for i in self.indices]
        if self.per_unit:
            weight = parts[0].reshape(*parts[0].shape[: len(lead) + 1], -1)  # (*lead, d_out, d_in)
            return torch.cat([weight] + [p.unsqueeze(-1) for p in parts[1:]], dim=-1)
        flat = [p.reshape(*lead, -1) for p in parts]
        return torch.cat(flat, dim=-1).unsqueeze(-2)

    def scatter(self, block: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
        """Inverse of :meth:`gather` for one vector: ``(B, n_b)`` -> tensors of ``shapes[i]``."""
        if self.per_unit:
            weight_shape = shapes[self.indices[0]]
            n_w = math.prod(weight_shape[1:])
            out = [block[:, :n_w].reshape(weight_shape)]
            if len(self.indices) == 2:
                out.append(block[:, n_w].contiguous())
            return out
        sizes = [math.prod(shapes[i]) for i in self.indices]
        return [p.reshape(shapes[i]) for p, i in zip(block[0].split(sizes), self.indices)]


def _block_groups(layout: ParameterLayout, blocks: Blocks) -> list[_BlockGroup]:
    """The block structure ``blocks`` over the layout's parameters (see the module docstring)."""
    if blocks is Blocks.NONE:
        return [_BlockGroup(tuple(range(len(layout.params))), per_unit=False)]
    groups = []
    for layer in layout.layers:
        indices = (layer.weight_index,) + (() if layer.bias_index is None else (layer.bias_index,))
        groups.append(_BlockGroup(indices, per_unit=blocks is Blocks.UNIT))
    groups.extend(_BlockGroup((i,), per_unit=False) for i in layout.other)
    return groups


@dataclass(frozen=True)
class ExampleGradients:
    """TONGA's statistics of one batch: per-example gradients, ``(m, *param.shape)`` per parameter.

    Unlike the K-FAC factors these are not means: across processes they are gathered, not averaged.
    """

    gradients: tuple[Tensor, ...]

    def named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """``("gradients of parameter i", tensor)`` per parameter."""
        for i, g in enumerate(self.gradients):
            yield f"gradients of parameter {i}", g

    def tensors(self) -> Iterator[Tensor]:
        """Every tensor (for the finiteness guard)."""
        return iter(self.gradients)


@dataclass(frozen=True)
class LowRankFactors:
    """The moving average ``C = blockdiag(X_b X_b^T)`` as each block group's factor and Gram matrix.

    Attributes:
        factors: per group ``X`` ``(B, n_b, r)``, None before the group's first update.
        grams: per group ``X^T X`` ``(B, r, r)``.
    """

    factors: list[Tensor | None]
    grams: list[Tensor | None]

    def state(self) -> dict[str, list[Tensor | None]]:
        """Cloned factors and Gram matrices, for ``state_dict``."""
        clone = lambda ts: [None if t is None else t.clone() for t in ts]  # noqa: E731
        return {"factors": clone(self.factors), "grams": clone(self.grams)}


class TongaCurvature(CurvatureRepresentation):
    r"""Block-diagonal low-rank model ``C = blockdiag(X_b X_b^T)`` of the gradient covariance.

    The shared contract of :class:`~natgrad.curvature.base.CurvatureRepresentation`, with two
    departures from the moving-average families, both from the paper: the averages are a factor
    whose width changes between eigendecompositions (:class:`LowRankFactors`), and the products
    use the *current* factor (the paper's ``X_{t+b}`` includes the gradients added since the last
    eigendecomposition), so :meth:`solve` works before any refresh and :meth:`refresh` is the
    amortised truncation to rank ``k``. Call it every ``b`` updates (the shared step's ``T3``,
    ``schedule.inverse_every``): between refreshes the factor grows by ``m`` columns per update,
    to at most ``k + b m``. ``C`` has rank ``r < n`` and is singular, so :meth:`solve` needs
    ``tikhonov > 0``.

    Args:
        model: the module; its trainable parameters (``named_parameters`` order) are the
            coordinates and its Kronecker layers define the blocks.
        config: :class:`TongaConfig` (its ``discount`` caps the moving-average decay).
    """

    needs_positive_tikhonov = True

    def __init__(self, model: nn.Module, config: TongaConfig | None = None) -> None:
        self.config = config or TongaConfig()
        super().__init__(model, self.config.discount)
        self.shapes = [p.shape for p in self.layout.params]
        self.groups = _block_groups(self.layout, self.config.blocks)

    def describe(self) -> str:
        """Every parameter and its block: low-rank plus diagonal, grouped by ``config.blocks``."""
        return self.layout.describe_table(
            block=f"TONGA low-rank (blocks = {self.config.blocks.value!r})"
        )

    @property
    def factors(self) -> list[Tensor | None]:
        """Each group's current factor ``X`` (None before its first update)."""
        return [None] * len(self.groups) if self._averages is None else self._averages.factors

    @property
    def ranks(self) -> list[int]:
        """Current number of columns ``r`` of each group's factor (0 before the first update)."""
        return [0 if x is None else int(x.shape[-1]) for x in self.factors]

    def _statistics(self, loss: Loss, generator: torch.Generator | None) -> ExampleGradients:
        """Per-example gradients ``(m, *param.shape)`` of the first ``examples_per_update``
        examples.

        One ``torch.func.vmap`` of ``grad`` (:func:`natgrad.curvature.exact.per_example_gradients`)
        on the sub-batch, with the same inputs (and VAE noise). ``generator`` is unused (TONGA needs
        no sampled targets).
        """
        m = self.config.examples_per_update
        sub_batch = loss.on_batch(tuple(t[:m] for t in loss.batch))
        flat = per_example_gradients(sub_batch)  # (m, P)
        offsets = self.layout.offsets
        return ExampleGradients(
            tuple(
                flat[:, a:b].reshape(-1, *shape)
                for a, b, shape in zip(offsets[:-1], offsets[1:], self.shapes)
            )
        )

    def _check_statistics(self, statistics: ExampleGradients) -> None:
        """Raises ValueError: gradients that do not match the parameters, or too few examples."""
        require(
            isinstance(statistics, ExampleGradients),
            "statistics",
            type(statistics).__name__,
            "ExampleGradients (from TongaCurvature.capture)",
        )
        shapes = [tuple(g.shape[1:]) for g in statistics.gradients]
        expected = [tuple(s) for s in self.shapes]
        require(
            shapes == expected,
            "gradient shapes",
            shapes,
            f"{expected} (parameters {self.layout.names})",
        )
        m = int(statistics.gradients[0].shape[0])
        least = 2 if self.config.centred else 1
        require(m >= least, "examples per update", m, f">= {least}")

    def _fold(
        self, averages: LowRankFactors | None, statistics: ExampleGradients, decay: float
    ) -> LowRankFactors:
        """``C <- w C + (1 - w) S``: the ``m`` new columns are appended (:meth:`refresh`
        truncates).
        """
        if averages is None:
            averages = LowRankFactors([None] * len(self.groups), [None] * len(self.groups))
        gradients = statistics.gradients
        m = int(gradients[0].shape[0])
        for i, group in enumerate(self.groups):
            new = group.gather(gradients, lead=(m,))  # (m, B, n_b)
            if self.config.centred:
                new = new - new.mean(dim=0, keepdim=True)
            new = new.permute(1, 2, 0) * math.sqrt((1.0 - decay) / m)  # (B, n_b, m)
            averages.factors[i], averages.grams[i] = _append_columns(
                averages.factors[i], averages.grams[i], new, decay
            )
        return averages

    def _freeze(self, averages: LowRankFactors) -> None:
        r"""Keep the top-``k`` eigenpairs of each block: ``X <- X V_{:, :k}``, Gram ``<-
        diag(D_{:k})``.

        ``X^T X = V D V^T`` (batched ``eigh`` of ``(B, r, r)``); ``X V`` has orthogonal columns of
        squared norms ``D``, the eigenvectors of ``C`` scaled by ``sqrt(D)``. In place: the products
        use the live factor, so nothing is frozen.
        """
        k = self.config.rank
        for i, (x, gram) in enumerate(zip(averages.factors, averages.grams)):
            if x is None or x.shape[-1] <= k:
                continue
            # float64: float32 LAPACK returns NaN on Grams with subnormal entries (dead units,
            # measured on the MNIST autoencoder); the (B, r, r) matrices are small.
            eigenvalues, vectors = torch.linalg.eigh(gram.double())  # ascending
            averages.factors[i] = x @ vectors[..., -k:].flip(-1).to(x.dtype)
            averages.grams[i] = torch.diag_embed(eigenvalues[..., -k:].flip(-1).clamp_min(0.0)).to(
                gram.dtype
            )
        return None

    def _matrix(self) -> LowRankFactors | None:
        """The live factor (None before the first update: ``C = 0``)."""
        return self._averages

    def _load_statistics(self, state: Mapping[str, Any]) -> LowRankFactors:
        """Raises ValueError: the state has a different number of block groups than this model."""
        require(
            len(state["factors"]) == len(self.groups),
            "TONGA state block groups",
            len(state["factors"]),
            f"{len(self.groups)}, this model's",
        )
        cloned = LowRankFactors(list(state["factors"]), list(state["grams"])).state()
        return LowRankFactors(cloned["factors"], cloned["grams"])

    def _shifted_factors(self, frozen: LowRankFactors | None, tikhonov: float) -> None:
        """Nothing to cache: the live factor changes at every update."""
        return None

    def _solve(
        self, vectors: list[Tensor], frozen: LowRankFactors | None, tikhonov: float, shifted: None
    ) -> list[Tensor]:
        r"""``(C + gamma^2 I)^{-1} v`` per block by Woodbury, never forming ``C``.

        ``(X X^T + \gamma^2 I)^{-1} v = (v - X (X^T X + \gamma^2 I)^{-1} X^T v) / \gamma^2``.
        """
        out: list[Tensor | None] = [None] * len(self.shapes)
        for group, x, gram in zip(self.groups, self.factors, self._grams()):
            v = group.gather(vectors)  # (B, n_b)
            if x is None:
                result = v / tikhonov
            else:
                eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
                coefficients = torch.linalg.solve(
                    gram + tikhonov * eye, x.transpose(-1, -2) @ v.unsqueeze(-1)
                )
                result = (v - (x @ coefficients).squeeze(-1)) / tikhonov
            self._place(out, group, result)
        return out  # type: ignore[return-value]

    def _matvec(self, vectors: list[Tensor], frozen: LowRankFactors | None) -> list[Tensor]:
        """``C v = X (X^T v)`` per block (zero before the first update)."""
        out: list[Tensor | None] = [None] * len(self.shapes)
        for group, x in zip(self.groups, self.factors):
            v = group.gather(vectors)
            result = (
                torch.zeros_like(v)
                if x is None
                else (x @ (x.transpose(-1, -2) @ v.unsqueeze(-1))).squeeze(-1)
            )
            self._place(out, group, result)
        return out  # type: ignore[return-value]

    def _dense(self, frozen: LowRankFactors | None, tikhonov: float | None) -> Tensor:
        """``C`` (or ``C + gamma^2 I``) as a ``(P, P)`` matrix in the flat parameter order (tests
        only).
        """
        n = self.layout.dimension
        dense = torch.zeros(n, n, dtype=self.layout.params[0].dtype)
        positions = self.layout.unflatten(torch.arange(n))
        for group, x in zip(self.groups, self.factors):
            if x is None:
                continue
            index = group.gather(positions)  # (B, n_b): flat position of each block entry
            blocks = x @ x.transpose(-1, -2)  # (B, n_b, n_b)
            dense[index.unsqueeze(-1).expand_as(blocks), index.unsqueeze(-2).expand_as(blocks)] = (
                blocks
            )
        if tikhonov is not None:
            dense += tikhonov * torch.eye(n, dtype=dense.dtype)
        return dense

    def _grams(self) -> list[Tensor | None]:
        return [None] * len(self.groups) if self._averages is None else self._averages.grams

    def _place(self, out: list, group: _BlockGroup, block: Tensor) -> None:
        for i, part in zip(group.indices, group.scatter(block, self.shapes)):
            out[i] = part


def _append_columns(
    x: Tensor | None, gram: Tensor | None, new: Tensor, decay: float
) -> tuple[Tensor, Tensor]:
    """``X <- [sqrt(w) X, new]`` and its Gram by the paper's block formula (p. 5)."""
    new_gram = new.transpose(-1, -2) @ new
    if x is None or decay == 0.0:
        return new, new_gram
    x = x * math.sqrt(decay)
    cross = x.transpose(-1, -2) @ new  # (B, r, m)
    top = torch.cat([gram * decay, cross], dim=-1)
    bottom = torch.cat([cross.transpose(-1, -2), new_gram], dim=-1)
    return torch.cat([x, new], dim=-1), torch.cat([top, bottom], dim=-2)
