"""Weight initialisations of the Hessian-free and K-FAC papers."""

from __future__ import annotations

import torch
from torch import nn

from natgrad.validation import require


def sparse_init_(
    linear: nn.Linear, nonzero: int = 15, generator: torch.Generator | None = None
) -> None:
    """Sparse initialisation (Martens 2010, section 5).

    Each unit gets ``nonzero`` incoming weights drawn from N(0, 1), all others zero; the bias is
    zero. When a layer has fewer than ``nonzero`` inputs, every input is connected.
    """
    require(nonzero >= 1, "sparse init nonzero", nonzero, "an integer >= 1")
    out_features, in_features = linear.weight.shape
    k = min(nonzero, in_features)
    with torch.no_grad():
        weight = torch.zeros(out_features, in_features, dtype=linear.weight.dtype)
        scores = torch.rand(out_features, in_features, generator=generator)
        cols = scores.argsort(dim=1)[:, :k]
        values = torch.randn(out_features, k, generator=generator, dtype=linear.weight.dtype)
        weight.scatter_(1, cols, values)
        linear.weight.copy_(weight)
        if linear.bias is not None:
            linear.bias.zero_()


INITIALISATIONS = ("sparse", "default")


def initialise_(module: nn.Module, scheme: str, generator: torch.Generator | None = None) -> None:
    """Apply ``scheme`` ('sparse' or 'default', PyTorch's own) to every nn.Linear in ``module``."""
    require(scheme in INITIALISATIONS, "init", scheme, ", ".join(INITIALISATIONS))
    if scheme == "default":
        return
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            sparse_init_(layer, generator=generator)
