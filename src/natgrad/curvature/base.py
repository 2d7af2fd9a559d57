r"""The one interface every approximate curvature representation implements.

Notation: ``theta`` are the model's trainable parameters (the coordinates, see
:class:`~natgrad.curvature.layout.ParameterLayout`; vectors are lists of tensors aligned with
``representation.params``), ``C`` the represented curvature matrix (an approximation of the GGN
or Fisher ``F``), ``lambda`` the damping passed by the optimizer.

Life cycle, as the optimizer drives it (Martens & Grosse 2015, section 5 and Algorithm 1)::

    rep = BlockDiagonalKFAC(model, CurvatureConfig(kind="full"))
    for k, batch in enumerate(batches, 1):
        loss = build_loss(model, x_stats, generator=gen)     # e.g. 1/8 of the batch
        rep.update(rep.capture(loss, generator=gen))          # EMA of the statistics
        if k <= 3 or k % T3 == 0:
            rep.refresh()                                     # amortised factorisation
        step = rep.solve(gradient, damping)                  # approx. (C + lambda I)^{-1} g

* :meth:`update` folds one batch's statistics into exponential moving averages,
  ``X <- eps_k X + (1 - eps_k) X_batch`` with ``eps_k = min(1 - 1/k, ema_cap)`` (section 5;
  k counts updates from 1, so the first update uses the batch alone), or a fixed ``decay``.
* :meth:`refresh` freezes the current averages into the matrix that :meth:`solve`,
  :meth:`matvec` and :meth:`to_dense` use, and does the expensive damping-independent work
  (eigendecompositions). Until the first refresh those methods raise.
* :meth:`solve` applies ``M(lambda)^{-1}``, where ``M(lambda)`` is the representation's damped
  matrix, ``M(lambda) = to_dense(lambda)`` (for K-FAC the factored Tikhonov approximation of
  ``C + lambda I``, section 6.3; otherwise exactly ``C + lambda I``). Damping-dependent work is
  cached per damping value, so trying several dampings (section 6.6) costs one small
  factorisation each and never touches the statistics; the last :data:`DAMPED_CACHE` dampings
  stay cached, so returning to the chosen candidate after the search costs nothing.
* :meth:`matvec` multiplies by the undamped ``C``; :meth:`to_dense` returns ``C`` or ``M(lambda)``
  as a ``(P, P)`` matrix (tests and tiny models only).
* :meth:`state_dict` / :meth:`load_state_dict` hold everything needed to resume exactly: the moving
  averages, the update count and the refreshed matrix. Caches are rebuilt deterministically.

Statistics are plain tensors that are batch means, so a data-parallel run can all-reduce
:class:`~natgrad.curvature.capture.CapturedBatch`-derived statistics before :meth:`update`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from natgrad.curvature.capture import CapturedBatch, capture
from natgrad.curvature.choices import CurvatureConfig
from natgrad.curvature.layout import ParameterLayout
from natgrad.finite import all_finite
from natgrad.losses import Loss
from natgrad.validation import in_unit_interval, is_number, require


#: Damped factorisations kept per refresh: the three gamma candidates of a search (section 6.6).
DAMPED_CACHE = 3


class NonFiniteStatistics(ArithmeticError):
    """A batch's curvature statistics hold NaN or Inf; :meth:`CurvatureRepresentation.update` refused it."""


def check_damping(damping: float) -> float:
    """``damping`` as a float, rejected when negative or not finite."""
    require(is_number(damping) and damping >= 0, "damping", damping, "a finite number >= 0")
    return float(damping)


class CurvatureRepresentation(ABC):
    """Base class: EMA statistics, refresh/solve/matvec/to_dense and state handling.

    Subclasses implement the private per-family hooks :meth:`_batch_statistics`, :meth:`_factorise`,
    :meth:`_solve`, :meth:`_matvec` and :meth:`_dense`; damping is validated and added only here.
    """

    def __init__(self, model: nn.Module, config: CurvatureConfig | None = None) -> None:
        self.config = config or CurvatureConfig()
        self.layout = ParameterLayout(model)
        self.steps = 0
        self._averages: dict[str, Tensor] = {}
        self._frozen: dict[str, Tensor] | None = None
        self._factors: dict[str, Any] = {}
        self._damped: dict[float, Any] = {}  # damping -> damped factors, at most DAMPED_CACHE entries

    @property
    def params(self) -> list[Tensor]:
        """The parameters every vector is aligned with."""
        return self.layout.params

    def describe(self) -> str:
        """A table of every trainable parameter, its shape and its block (:meth:`ParameterLayout.describe`)."""
        return self.layout.describe_table()

    # ---- statistics -------------------------------------------------------------------------
    def capture(self, loss: Loss, generator: torch.Generator | None = None) -> CapturedBatch:
        """Layer statistics of ``loss``'s batch for this representation's curvature kind and estimator."""
        return capture(self.layout, loss, self.config.kind, self.config.estimator, generator)

    def update(self, batch: CapturedBatch, decay: float | None = None) -> None:
        """Fold one batch into the moving averages: ``X <- eps X + (1 - eps) X_batch``.

        ``decay`` defaults to ``min(1 - 1/k, ema_cap)`` with ``k`` the update count from 1.

        A batch with a NaN or Inf statistic is refused before anything is folded in, so one bad
        batch never poisons the averages.

        Raises:
            ValueError: ``decay`` outside ``[0, 1)``.
            NonFiniteStatistics: a statistic of ``batch`` is NaN or Inf (nothing was changed).
        """
        require(decay is None or in_unit_interval(decay), "decay", decay, "a number in [0, 1) or None")
        statistics = self._batch_statistics(batch)
        if not all_finite(statistics.values()):  # one pass; name the culprits only on failure
            bad = [key for key, value in statistics.items() if not all_finite((value,))]
            raise NonFiniteStatistics(f"non-finite curvature statistics {bad[:3]}; averages left unchanged")
        self.steps += 1
        if decay is None:
            decay = min(1.0 - 1.0 / self.steps, self.config.ema_cap)
        for key, value in statistics.items():
            old = self._averages.get(key)
            if old is None:
                self._averages[key] = value.clone()  # owned: later updates work in place
            else:  # in place: no temporaries the size of the factors
                old.mul_(decay).add_(value, alpha=1.0 - decay)

    def refresh(self) -> None:
        """Freeze the current averages as the represented matrix and factorise it (amortised).

        Raises:
            RuntimeError: no statistics were accumulated yet.
        """
        if not self._averages:
            raise RuntimeError(f"{type(self).__name__}.refresh() called before any update()")
        self._frozen = {k: v.clone() for k, v in self._averages.items()}
        self._factors = self._factorise(self._frozen)
        self._damped = {}

    # ---- products ---------------------------------------------------------------------------
    def solve(self, vectors: Sequence[Tensor], damping: float) -> list[Tensor]:
        """``M(damping)^{-1} v``, aligned with :attr:`params` (see the module docstring)."""
        vectors = self.layout.check(vectors)
        damping = check_damping(damping)
        frozen = self._require_frozen()
        if damping not in self._damped:
            if len(self._damped) >= DAMPED_CACHE:
                del self._damped[next(iter(self._damped))]  # the oldest
            self._damped[damping] = self._damped_factors(frozen, damping)
        return self._solve(vectors, damping, self._damped[damping])

    def matvec(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """``C v`` with the undamped represented matrix."""
        return self._matvec(self.layout.check(vectors), self._require_frozen())

    def to_dense(self, damping: float | None = None) -> Tensor:
        """``C`` (``damping=None``) or the damped ``M(damping)`` that :meth:`solve` inverts, ``(P, P)``."""
        frozen = self._require_frozen()
        return self._dense(frozen, None if damping is None else check_damping(damping))

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Moving averages, update count and the refreshed matrix (tensors cloned)."""
        return {
            "steps": self.steps,
            "averages": {k: v.clone() for k, v in self._averages.items()},
            "frozen": None if self._frozen is None else {k: v.clone() for k, v in self._frozen.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; factorisations are recomputed from the frozen matrix.

        Raises:
            KeyError: a required entry is missing.
        """
        missing = {"steps", "averages", "frozen"} - set(state)
        if missing:
            raise KeyError(f"curvature state_dict is missing {sorted(missing)}")
        self.steps = int(state["steps"])
        self._averages = {k: v.clone() for k, v in state["averages"].items()}
        frozen = state["frozen"]
        self._frozen = None if frozen is None else {k: v.clone() for k, v in frozen.items()}
        self._factors = {} if self._frozen is None else self._factorise(self._frozen)
        self._damped = {}

    def _require_frozen(self) -> dict[str, Tensor]:
        if self._frozen is None:
            raise RuntimeError(f"{type(self).__name__}: call update() and refresh() before solve/matvec/to_dense")
        return self._frozen

    # ---- per-family hooks -------------------------------------------------------------------
    @abstractmethod
    def _batch_statistics(self, batch: CapturedBatch) -> dict[str, Tensor]:
        """This family's statistics of one batch (batch means, so they can be averaged/all-reduced)."""

    def _factorise(self, frozen: dict[str, Tensor]) -> dict[str, Any]:
        """Damping-independent factorisation of the frozen statistics (default: none)."""
        return {}

    @abstractmethod
    def _damped_factors(self, frozen: dict[str, Tensor], damping: float) -> Any:
        """Whatever :meth:`_solve` needs for this damping (cached until refresh or a new damping)."""

    @abstractmethod
    def _solve(self, vectors: list[Tensor], damping: float, damped: Any) -> list[Tensor]:
        """Apply ``M(damping)^{-1}``."""

    @abstractmethod
    def _matvec(self, vectors: list[Tensor], frozen: dict[str, Tensor]) -> list[Tensor]:
        """Apply the undamped ``C``."""

    @abstractmethod
    def _dense(self, frozen: dict[str, Tensor], damping: float | None) -> Tensor:
        """``C`` or ``M(damping)`` as a dense ``(P, P)`` matrix."""
