"""Which curvature matrix is estimated: the typed choices shared by oracles and representations.

* :class:`CurvatureKind` — for a model with several loss terms (the VAE):

  - ``FULL``: the generalised Gauss-Newton of the whole objective,
    ``G = (1/N) sum_n sum_t J_{t,n}^T H_{t,n} J_{t,n}`` (every term; for the VAE the likelihood
    Jacobian runs through ``z = mu + sigma * eps`` into the encoder, plus the KL term on
    ``(mu, log sigma^2)``).
  - ``DECODER_ONLY``: only the likelihood terms (:attr:`natgrad.losses.LossTerm.is_likelihood`),
    what a naive K-FAC on a VAE estimates.
  - ``EMPIRICAL``: the empirical Fisher ``(1/N) sum_n grad l_n grad l_n^T`` of the per-example
    objective ``l_n = sum_t L_{t,n}`` at the data (Martens 2014: not a curvature matrix in general).

* :class:`OutputGradientEstimator` — how approximate representations get the output-side vectors
  they back-propagate (Martens & Grosse 2015, section 5): ``SAMPLED`` draws one ``s`` per example
  and term with ``E[s s^T] = H`` (the Monte-Carlo Fisher), ``EXACT`` back-propagates every column of
  the diagonal square root ``H^{1/2}`` (one backward pass per output dimension; tiny models only).
  ``EMPIRICAL`` curvature always uses the loss gradient itself.
"""
from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from natgrad.losses import LossTerm


class CurvatureKind(str, Enum):
    FULL = "full"
    DECODER_ONLY = "decoder-only"
    EMPIRICAL = "empirical"


class OutputGradientEstimator(str, Enum):
    SAMPLED = "sampled"
    EXACT = "exact"


def parse_choice(enum: type[Enum], field: str, value: object) -> Enum:
    """``value`` as a member of ``enum``, with an error naming ``field`` and the allowed values.

    Raises:
        ValueError: ``value`` is not one of the enum's values.
    """
    try:
        return enum(value)
    except ValueError:
        allowed = [m.value for m in enum]
        raise ValueError(f"{field} must be one of {allowed}, got {value!r}") from None


def select_terms(terms: Sequence[LossTerm], kind: CurvatureKind) -> tuple[LossTerm, ...]:
    """The terms whose output curvature enters the matrix ``kind`` (all but for DECODER_ONLY).

    Raises:
        ValueError: DECODER_ONLY was asked for a loss without likelihood terms.
    """
    if kind is not CurvatureKind.DECODER_ONLY:
        return tuple(terms)
    chosen = tuple(t for t in terms if t.is_likelihood)
    if not chosen:
        names = [t.name for t in terms]
        raise ValueError(f"curvature kind 'decoder-only' needs a likelihood term; the loss has terms {names}")
    return chosen
