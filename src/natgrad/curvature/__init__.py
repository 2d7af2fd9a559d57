r"""Curvature: exact oracles (``exact.py``) and approximate representations behind one contract
(``base.py``).

Notation, fixed here for :mod:`natgrad.curvature` and :mod:`natgrad.optim` (other docstrings refer
to it instead of redefining it):

* ``theta``: the model's trainable parameters in ``named_parameters()`` order, ``P`` scalars
  (:class:`~natgrad.curvature.layout.ParameterLayout`); a vector is a list of tensors aligned
  with them.
* ``loss(theta) = (1/N) sum_n sum_t L_t(z_{t,n})``: the mean loss of a batch
  (:attr:`natgrad.losses.Loss.value`), a sum of terms ``L_t`` of network outputs ``z_t``.
  ``h(theta) = loss(theta) + (eta/2) |theta|^2``: the objective the optimizers minimise, with
  ``eta`` the weight decay; ``grad = nabla h``. ``h`` always includes the weight decay.
* ``J_t``: the Jacobian of ``z_t``; ``H_t``: the output-space curvature of term ``t`` (its
  Hessian, or its Fisher where it is not convex), diagonal or one matrix per example.
* ``G = (1/N) sum_n sum_t J_t^T H_t J_t``: the generalised Gauss-Newton matrix (GGN), and only
  that. ``F``: the Fisher, the GGN of the likelihood terms (equal to ``G`` for the matching
  losses here). The empirical Fisher ``(1/N) sum_n grad l_n grad l_n^T``. *Exact* means these
  matrices as :mod:`natgrad.curvature.exact` computes them (the test oracles), nothing else.
* ``C``: the matrix a representation stores, an approximation of one of the above
  (:class:`~natgrad.curvature.choices.CurvatureKind`).
* ``A_i``, ``B_i``: K-FAC's input factor ``E[a_bar a_bar^T]`` and output factor ``E[g g^T]`` of
  Kronecker layer ``i`` (Martens & Grosse's ``A_bar`` and ``G``, renamed so that ``G`` is only the
  GGN); ``A_{i,i+1}``, ``B_{i,i+1}``: the cross factors of consecutive layers (tridiagonal K-FAC).
* ``lambda``: the Levenberg-Marquardt damping. In code, *damping* means ``lambda`` and nothing else.
* ``gamma``: the factored-Tikhonov strength (Martens & Grosse 2015, sections 6.3 and 6.6).
  :meth:`~natgrad.curvature.base.CurvatureRepresentation.solve` and ``to_dense`` receive
  ``tikhonov = gamma^2`` and apply ``M(gamma^2)``, the representation's approximation of
  ``C + gamma^2 I`` (factored for K-FAC, exact otherwise); the optimizers tie
  ``gamma^2 = lambda + eta`` or search ``gamma`` separately.
* *decay* ``eps_k``: the moving-average weight, ``X <- eps_k X + (1 - eps_k) X_batch`` with
  ``eps_k = min(1 - 1/k, ema_cap)``. (The 19/20 rule that moves ``lambda`` and ``gamma`` is
  :attr:`natgrad.optim.DampingConfig.per_step_decrease`, not a decay.)
"""

from natgrad.curvature.base import CurvatureRepresentation
from natgrad.curvature.capture import CapturedBatch, capture
from natgrad.curvature.choices import CurvatureConfig, CurvatureKind, OutputGradientEstimator
from natgrad.curvature.diagonal import DiagonalCurvature
from natgrad.curvature.kfac import BlockDiagonalKFAC, InverseMethod, SolveDtype
from natgrad.curvature.kfac_tridiagonal import TridiagonalKFAC
from natgrad.curvature.layout import ParameterLayout

__all__ = [
    "BlockDiagonalKFAC",
    "CapturedBatch",
    "CurvatureConfig",
    "CurvatureKind",
    "CurvatureRepresentation",
    "DiagonalCurvature",
    "InverseMethod",
    "OutputGradientEstimator",
    "ParameterLayout",
    "SolveDtype",
    "TridiagonalKFAC",
    "capture",
]
