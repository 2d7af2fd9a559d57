"""Fully connected stacks shared by the autoencoder and the VAE."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from natgrad.validation import require

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def activation(name: str) -> nn.Module:
    """The hidden nonlinearity called ``name`` (the papers use 'sigmoid', the logistic unit)."""
    require(name in ACTIVATIONS, "activation", name, ", ".join(sorted(ACTIVATIONS)))
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], hidden_activation: str, final_activation: bool) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with ``hidden_activation`` between them.

    The last layer is linear unless ``final_activation``. Layers are in one flat Sequential in
    forward order, so curvature capture sees them as a chain (needed by block-tridiagonal K-FAC).
    """
    ok = len(sizes) >= 2 and all(int(s) >= 1 for s in sizes)
    require(ok, "layer sizes", list(sizes), "a list of >= 2 positive integers")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(int(d_in), int(d_out)))
        if i < len(sizes) - 2 or final_activation:
            layers.append(activation(hidden_activation))
    return nn.Sequential(*layers)
