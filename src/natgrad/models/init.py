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


#: Standard deviation of N(0, 1) truncated to [-2, 2]: dividing by it restores unit variance.
TRUNCATED_NORMAL_STD = 0.87962566103423978


def fan_in_init_(linear: nn.Linear, generator: torch.Generator | None = None) -> None:
    """Truncated-normal fan-in initialisation: ``W_ij ~ N(0, 1 / fan_in)`` truncated at two
    standard deviations and rescaled to keep the variance ``1 / fan_in``; the bias is zero.

    The variance-scaling (fan-in, truncated normal) initialiser of the kfac-jax autoencoder
    examples; with tanh units it keeps the pre-activations' variance near 1 through the layers
    (LeCun et al. 1998, section 4.6).
    """
    std = (1.0 / linear.weight.shape[1]) ** 0.5 / TRUNCATED_NORMAL_STD
    with torch.no_grad():
        nn.init.trunc_normal_(
            linear.weight, std=std, a=-2.0 * std, b=2.0 * std, generator=generator
        )
        if linear.bias is not None:
            linear.bias.zero_()


INITIALISATIONS = ("sparse", "fan-in", "default")


def initialise_(module: nn.Module, scheme: str, generator: torch.Generator | None = None) -> None:
    """Apply ``scheme`` to every nn.Linear in ``module``: 'sparse' (:func:`sparse_init_`),
    'fan-in' (:func:`fan_in_init_`) or 'default' (PyTorch's own, left as constructed).
    """
    require(scheme in INITIALISATIONS, "init", scheme, ", ".join(INITIALISATIONS))
    if scheme == "default":
        return
    init_layer = sparse_init_ if scheme == "sparse" else fan_in_init_
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            init_layer(layer, generator=generator)
