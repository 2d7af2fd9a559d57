r"""The one contract every approximate curvature representation satisfies.

Notation of :mod:`natgrad.curvature` (``C``, ``gamma``, ``tikhonov = gamma^2``, decay ``eps_k``).
Life cycle, as the optimizer drives it (Martens & Grosse 2015, section 5 and Algorithm 1)::

    rep = BlockDiagonalKFAC(model, CurvatureConfig(kind="full"))
    for k, batch in enumerate(batches, 1):
        loss = build_loss(model, x, generator=gen).prefix(1 / 8)    # tau_1 of the batch
        rep.update(rep.capture(loss, generator=gen))              # moving averages
        if k <= 3 or k % T3 == 0:
            rep.refresh()                                         # amortised factorisation
        direction = rep.solve(gradient, gamma**2)                 # M(gamma^2)^{-1} grad

* :meth:`capture` computes one batch's statistics (batch means: a data-parallel run all-reduces
  them here), typed per family: :class:`~natgrad.curvature.statistics.CurvatureStatistics` for
  K-FAC and the diagonal, per-example gradients for TONGA.
* :meth:`update` refuses non-finite statistics, then folds them into the moving averages,
  ``X <- eps_k X + (1 - eps_k) X_batch`` with ``eps_k = min(1 - 1/k, ema_cap)`` (section 5; ``k``
  counts updates from 1, so the first update uses the batch alone), or a given ``decay``.
* :meth:`refresh` freezes the current averages into the matrix ``C`` that :meth:`solve`,
  :meth:`matvec` and :meth:`to_dense` use, and does the expensive work that does not depend on
  ``gamma`` (eigendecompositions). Until the first refresh those methods raise. (TONGA departs:
  its products use the live factor, and refresh truncates it; see ``tonga.py``.)
* :meth:`solve` applies ``M(gamma^2)^{-1}``, with ``M(gamma^2) = to_dense(gamma^2)`` the
  representation's approximation of ``C + gamma^2 I`` (for K-FAC the factored Tikhonov form,
  section 6.3; otherwise exactly ``C + gamma^2 I``). ``gamma^2`` enters only here, through
  :meth:`solve` and :meth:`to_dense` (validated once in this class; each family's hooks add it in
  their own form); the optimizer never adds it to anything. The work that depends on ``gamma^2`` is
  cached per value, so trying several ``gamma`` (section 6.6) costs one small factorisation each and
  never touches the statistics; the last :data:`SHIFTED_CACHE` values stay cached, so returning to
  the chosen candidate costs nothing.
* :meth:`matvec` multiplies by ``C``; :meth:`to_dense` returns ``C`` or ``M(gamma^2)`` as a
  ``(P, P)`` matrix (tests and tiny models only).
* :meth:`state_dict` / :meth:`load_state_dict` hold everything needed to resume exactly: the moving
  averages, the update count and the frozen statistics. Caches are rebuilt deterministically.

The expensive work of a refresh or of a new ``gamma^2`` (eigendecompositions, damped inverses) is
a list of independent :class:`BlockJob`\ s handed to :attr:`CurvatureRepresentation.run_jobs`,
which computes them one after the other; a data-parallel optimizer replaces it with one that
spreads them over the processes (:mod:`natgrad.distributed.refresh`), so no representation knows
whether it runs on one process or many.

A family implements the private hooks below; each receives the same arguments in every family
(the frozen statistics ``frozen``, the value ``tikhonov``, the cached ``shifted`` factors).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from natgrad.curvature.layout import ParameterLayout
from natgrad.curvature.statistics import CurvatureStatistics
from natgrad.finite import all_finite
from natgrad.losses import Loss
from natgrad.validation import in_unit_interval, is_number, require

#: Shifted factorisations kept per refresh: the three gamma candidates of a search (section 6.6).
SHIFTED_CACHE = 3


class NonFiniteStatistics(ArithmeticError):
    """A batch's curvature statistics hold NaN or Inf; :meth:`CurvatureRepresentation.update`
    refused it.
    """


@dataclass(frozen=True)
class BlockJob:
    """One independent piece of a refresh: ``compute()`` returns tensors shaped as ``outputs``
    declares.

    Attributes:
        name: what it computes, e.g. ``"encoder.0 A eigendecomposition"`` (logs and tests).
        compute: the work; reads the frozen statistics, returns a tuple of tensors.
        outputs: ``(shape, dtype)`` of each returned tensor, known before ``compute`` runs (a
            process that does not run the job allocates them to receive the owner's results).
        cost: estimated multiply-adds (``d^3`` for a ``d x d`` factorisation), to balance processes.
    """

    name: str
    compute: Callable[[], tuple[Tensor, ...]]
    outputs: tuple[tuple[tuple[int, ...], torch.dtype], ...]
    cost: float


#: Runs refresh jobs; returns their outputs in order.
JobRunner = Callable[[Sequence[BlockJob]], list[tuple[Tensor, ...]]]


def run_serially(jobs: Sequence[BlockJob]) -> list[tuple[Tensor, ...]]:
    """Every job on this process, in order (the one-process :data:`JobRunner`)."""
    return [tuple(job.compute()) for job in jobs]


class CurvatureRepresentation(ABC):
    """Moving-average statistics behind ``capture / update / refresh / solve / matvec / to_dense``.

    Args:
        model: the module whose trainable parameters are the coordinates.
        ema_cap: the cap of the moving-average decay (module docstring).

    Attributes:
        run_jobs: the :data:`JobRunner` of the refresh work (:func:`run_serially`; a data-parallel
            optimizer installs one that spreads the jobs over its processes).
    """

    #: True when ``C`` is singular by construction, so :meth:`solve` needs ``tikhonov > 0``.
    needs_positive_tikhonov = False

    def __init__(self, model: nn.Module, ema_cap: float) -> None:
        self.layout = ParameterLayout(model)
        self.ema_cap = ema_cap
        self.steps = 0
        self._averages: Any = (
            None  # the family's statistics container, None before the first update
        )
        self._frozen: Any = None  # the averages frozen by the last refresh
        self._factors: Any = None  # _factorise(frozen)
        self._shifted: dict[
            float, Any
        ] = {}  # tikhonov -> _shifted_factors, at most SHIFTED_CACHE entries
        self.run_jobs: JobRunner = run_serially

    @property
    def params(self) -> list[Tensor]:
        """The parameters every vector is aligned with."""
        return self.layout.params

    @property
    def averages(self) -> Any:
        """The moving averages (the family's statistics container, None before the first update).

        A data-parallel optimizer averages their tensors in place across processes before a
        refresh (the moving average is linear, so that equals averaging every batch's statistics).
        """
        return self._averages

    @property
    def frozen(self) -> Any:
        """The statistics the represented matrix was built from at the last :meth:`refresh` (or
        None).
        """
        return self._frozen

    def describe(self) -> str:
        """A table of every trainable parameter, its shape and its block
        (:meth:`ParameterLayout.describe`).
        """
        return self.layout.describe_table()

    # ---- statistics -------------------------------------------------------------------------
    def capture(self, loss: Loss, generator: torch.Generator | None = None) -> Any:
        """The statistics of ``loss``'s batch (``generator`` draws the sampled output vectors)."""
        return self._statistics(loss, generator)

    def update(self, statistics: Any, decay: float | None = None) -> None:
        """Fold one batch's statistics into the moving averages: ``X <- eps X + (1 - eps) X_batch``.

        ``decay`` defaults to ``min(1 - 1/k, ema_cap)`` with ``k`` the update count from 1. A batch
        with a NaN or Inf statistic is refused before anything is folded in, so one bad batch never
        poisons the averages.

        Raises:
            ValueError: ``decay`` outside ``[0, 1)``, or statistics that do not fit this model.
            NonFiniteStatistics: a statistic is NaN or Inf (nothing was changed).
        """
        require(
            decay is None or in_unit_interval(decay), "decay", decay, "a number in [0, 1) or None"
        )
        self._check_statistics(statistics)
        if not all_finite(statistics.tensors()):  # one pass; name the culprits only on failure
            bad = [name for name, value in statistics.named_tensors() if not all_finite((value,))]
            raise NonFiniteStatistics(
                f"non-finite curvature statistics {bad[:3]}; averages left unchanged"
            )
        self.steps += 1
        if decay is None:
            decay = min(1.0 - 1.0 / self.steps, self.ema_cap)
        self._averages = self._fold(self._averages, statistics, decay)

    def refresh(self) -> None:
        """Freeze the current averages as the represented matrix and factorise it (amortised).

        Raises:
            RuntimeError: no statistics were accumulated yet.
        """
        if self._averages is None:
            raise RuntimeError(f"{type(self).__name__}.refresh() called before any update()")
        self._frozen = self._freeze(self._averages)
        self._factors = self._factorise(self._frozen)
        self._shifted = {}

    # ---- products ---------------------------------------------------------------------------
    def solve(self, vectors: Sequence[Tensor], tikhonov: float) -> list[Tensor]:
        """``M(tikhonov)^{-1} v``, aligned with :attr:`params`, ``tikhonov = gamma^2`` (module
        docstring).

        Raises:
            ValueError: ``vectors`` do not match the parameters, or ``tikhonov`` is negative, not
                finite, or zero where :attr:`needs_positive_tikhonov`.
        """
        vectors = self.layout.check(vectors)
        tikhonov = self._check_tikhonov(tikhonov, solving=True)
        frozen = self._matrix()
        if tikhonov not in self._shifted:
            if len(self._shifted) >= SHIFTED_CACHE:
                del self._shifted[next(iter(self._shifted))]  # the oldest
            self._shifted[tikhonov] = self._shifted_factors(frozen, tikhonov)
        return self._solve(vectors, frozen, tikhonov, self._shifted[tikhonov])

    def matvec(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """``C v``."""
        return self._matvec(self.layout.check(vectors), self._matrix())

    def to_dense(self, tikhonov: float | None = None) -> Tensor:
        """``C`` (``tikhonov=None``) or ``M(tikhonov)``, the matrix :meth:`solve` inverts, ``(P,
        P)``.
        """
        frozen = self._matrix()
        return self._dense(frozen, None if tikhonov is None else self._check_tikhonov(tikhonov))

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Moving averages, update count and the frozen statistics (tensors cloned)."""
        return {
            "steps": self.steps,
            "averages": None if self._averages is None else self._averages.state(),
            "frozen": None if self._frozen is None else self._frozen.state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; factorisations are recomputed from the frozen
        statistics.

        Raises:
            KeyError: a required entry is missing.
            ValueError: the state belongs to another model.
        """
        missing = {"steps", "averages", "frozen"} - set(state)
        if missing:
            raise KeyError(f"curvature state_dict is missing {sorted(missing)}")
        self.steps = int(state["steps"])
        self._averages = (
            None if state["averages"] is None else self._load_statistics(state["averages"])
        )
        self._frozen = None if state["frozen"] is None else self._load_statistics(state["frozen"])
        self._factors = None if self._frozen is None else self._factorise(self._frozen)
        self._shifted = {}

    # ---- shared checks ----------------------------------------------------------------------
    def _check_tikhonov(self, tikhonov: float, solving: bool = False) -> float:
        require(
            is_number(tikhonov) and tikhonov >= 0,
            "tikhonov",
            tikhonov,
            "a finite number >= 0 (gamma^2)",
        )
        require(
            not (solving and self.needs_positive_tikhonov and tikhonov == 0),
            "tikhonov",
            tikhonov,
            f"a number > 0: {type(self).__name__}'s C is singular",
        )
        return float(tikhonov)

    def _matrix(self) -> Any:
        """What the products use: the frozen statistics (TONGA: its live factor)."""
        if self._frozen is None:
            raise RuntimeError(
                f"{type(self).__name__}: call update() and refresh() before solve/matvec/to_dense"
            )
        return self._frozen

    # ---- per-family hooks (same arguments in every family) ----------------------------------
    @abstractmethod
    def _statistics(self, loss: Loss, generator: torch.Generator | None) -> Any:
        """This family's statistics of ``loss``'s batch (batch means, so they average and
        all-reduce).
        """

    def _check_statistics(self, statistics: Any) -> None:
        """Refuse statistics that do not fit this model (default: not a
        :class:`CurvatureStatistics`).

        Raises:
            ValueError: statistics of another type.
        """
        require(
            isinstance(statistics, CurvatureStatistics),
            "statistics",
            type(statistics).__name__,
            f"CurvatureStatistics (from {type(self).__name__}.capture)",
        )

    def _fold(self, averages: Any, statistics: Any, decay: float) -> Any:
        """The new averages (default: a copy of the first batch, then the in-place moving
        average).
        """
        if averages is None:
            return statistics.clone()  # owned: later updates work in place
        averages.fold_(statistics, decay)
        return averages

    def _freeze(self, averages: Any) -> Any:
        """The matrix's statistics at a refresh (default: a copy of the averages)."""
        return averages.clone()

    def _load_statistics(self, state: Mapping[str, Any]) -> Any:
        """The statistics container of a :meth:`state_dict` entry."""
        return CurvatureStatistics.from_state(state)

    def _factorise(self, frozen: Any) -> Any:
        """Work on the frozen statistics that does not depend on ``gamma`` (default: none)."""
        return None

    @abstractmethod
    def _shifted_factors(self, frozen: Any, tikhonov: float) -> Any:
        """Whatever :meth:`_solve` needs for this ``tikhonov`` (cached until refresh)."""

    @abstractmethod
    def _solve(
        self, vectors: list[Tensor], frozen: Any, tikhonov: float, shifted: Any
    ) -> list[Tensor]:
        """Apply ``M(tikhonov)^{-1}``."""

    @abstractmethod
    def _matvec(self, vectors: list[Tensor], frozen: Any) -> list[Tensor]:
        """Apply ``C``."""

    @abstractmethod
    def _dense(self, frozen: Any, tikhonov: float | None) -> Tensor:
        """``C`` or ``M(tikhonov)`` as a dense ``(P, P)`` matrix."""
