"""Every optimizer of natgrad.optim, declared once: how to build it, and settings it must reject.

The conformance suite (test_conformance.py) runs the same tests on each case. Settings shrink the
periods T1/T2/T3 so a few steps exercise every branch of the step (LM update, gamma search,
inverse refresh).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from natgrad.losses import build_loss
from natgrad.optim import KFAC, TONGA, DiagonalNaturalGradient, HessianFree

_SHARED = {
    "damping": {"initial": 1.0, "adapt_every": 2, "gamma_every": 3},
    "schedule": {"inverse_every": 2, "statistics_fraction": 0.5},
}
_NATURAL_INVALID = (
    ({"damping": {"initial": -1.0}}, r"damping\.initial"),
    ({"damping": {"adapt_every": 0}}, r"damping\.adapt_every"),
    ({"curvature": {"ema_cap": 1.0}}, r"curvature\.ema_cap"),
    ({"schedule": {"statistics_fraction": 0.0}}, r"schedule\.statistics_fraction"),
    ({"step": {"momentum": 1.5}}, r"step\.momentum"),
    ({"curvature": {"kind": "hessian"}}, r"curvature\.kind"),
    ({"damping": {"lambda0": 1.0}}, r"damping.*keys among"),
    ({"seed": -1}, "seed"),
)

_TONGA_INVALID = tuple(case for case in _NATURAL_INVALID if "curvature" not in case[0]) + (
    ({"tonga": {"rank": 0}}, r"tonga\.rank"),
    ({"tonga": {"blocks": "rows"}}, r"tonga\.blocks"),
)


@dataclass(frozen=True)
class OptimizerCase:
    """One optimizer: a factory ``(model, **settings)``, the test settings and rejected settings."""

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    settings: dict[str, Any]
    invalid: tuple[tuple[dict[str, Any], str], ...] = field(default=())

    def build(self, model: nn.Module, **overrides: Any) -> torch.optim.Optimizer:
        return self.factory(model, **{**self.settings, **overrides})


CASES = (
    OptimizerCase("kfac", KFAC, dict(_SHARED), _NATURAL_INVALID + (({"structure": "dense"}, "structure"),)),
    OptimizerCase("kfac-tridiag", KFAC, dict(_SHARED, structure="tridiagonal"),
                  _NATURAL_INVALID + (({"inverse_method": "inverse"}, "inverse_method"),)),
    OptimizerCase("diag", DiagonalNaturalGradient, dict(_SHARED), _NATURAL_INVALID),
    OptimizerCase("tonga", TONGA, dict(_SHARED, tonga={"rank": 4, "examples_per_update": 8}), _TONGA_INVALID),
    OptimizerCase(
        "hf",
        HessianFree,
        {"damping": 1.0, "curvature_fraction": 0.5},
        (
            ({"damping": 0.0}, r"hf\.damping"),
            ({"curvature": "hessian"}, r"hf\.curvature"),
            ({"curvature_fraction": 1.5}, r"hf\.curvature_fraction"),
            ({"max_cg_iterations": 0}, r"hf\.max_cg_iterations"),
            ({"line_search_shrink": 1.0}, r"hf\.line_search_shrink"),
            ({"warm_start_decay": -0.1}, r"hf\.warm_start_decay"),
        ),
    ),
)


def loss_closure(optimizer, model, x, eps=None):
    """The closure contract of every natgrad optimizer: zero grads, build the Loss, backward, return it."""

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = build_loss(model, x, eps=eps)
        loss.value.backward()
        return loss

    return closure
