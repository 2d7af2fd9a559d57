"""Exact, cheap finiteness checks for the step guards and the statistics guard.

``torch.isfinite(t).all()`` makes four passes over ``t`` on CPU (``abs``, two comparisons and a
reduction); checked on every gradient, update and statistic, that was a noticeable share of a K-FAC
step (timings: ``benchmarks/results/docstring-timings.md``). ``(t * 0).sum()`` is ``0`` when every
entry is finite and ``nan`` otherwise (``inf * 0`` and ``nan * 0`` are ``nan`` in IEEE arithmetic),
in one pass and without the overflow a plain ``t.sum()`` could give.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """True when no entry of any tensor is ``nan`` or ``+-inf`` (True for no tensors)."""
    total = 0.0
    for t in tensors:
        total += float((t * 0).sum())
    return math.isfinite(total)
