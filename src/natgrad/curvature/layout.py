r"""How a model's parameters are laid out for curvature: Kronecker layers and the rest.

Every curvature matrix in natgrad is indexed by the model's trainable parameters in
``named_parameters()`` order, each flattened row-major (so ``to_dense()`` is ``(P, P)`` with
``P = sum of numel``). Vectors are lists of tensors aligned with :attr:`ParameterLayout.params`.

A *Kronecker layer* is an ``nn.Linear`` (any bias) or an ``nn.Conv2d`` with ``groups == 1`` and
zero padding. Its weight and bias form one matrix ``W_bar = [W, b]`` of shape
``(d_out, d_in [+1])`` (a Conv2d weight reshaped to ``(out_channels, in_channels*kh*kw)``, the
im2col column order of :func:`torch.nn.functional.unfold`). Every other trainable parameter
(normalisation scales, embeddings, grouped convolutions, ...) is an *other* parameter and gets a
diagonal curvature block.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class KroneckerLayer:
    """One Linear/Conv2d: its module, module name and the indices of its weight and bias in ``params``."""

    name: str
    module: nn.Module
    weight_index: int
    bias_index: int | None

    @property
    def d_out(self) -> int:
        return int(self.module.weight.shape[0])

    @property
    def d_in(self) -> int:
        """Columns of ``W_bar``: inputs per output (``in * kh * kw`` for a conv), plus 1 for a bias."""
        return int(self.module.weight[0].numel()) + (self.bias_index is not None)


def is_kronecker_module(module: nn.Module) -> bool:
    """True for nn.Linear and for nn.Conv2d with groups == 1 and padding_mode 'zeros'."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


class ParameterLayout:
    """The model's trainable parameters split into :class:`KroneckerLayer` s and *other* ones."""

    def __init__(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"{type(model).__name__} has no trainable parameters to build a curvature for")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        index = {id(p): i for i, (_, p) in enumerate(named)}
        layers, claimed = [], set()
        for mod_name, module in model.named_modules():
            if not is_kronecker_module(module) or id(module.weight) not in index:
                continue
            bias = module.bias
            bias_index = index.get(id(bias)) if bias is not None else None
            layers.append(KroneckerLayer(mod_name, module, index[id(module.weight)], bias_index))
            claimed.update(i for i in (index[id(module.weight)], bias_index) if i is not None)
        self.layers: list[KroneckerLayer] = layers
        self.other: list[int] = [i for i in range(len(named)) if i not in claimed]
        sizes = [p.numel() for p in self.params]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)

    @property
    def dimension(self) -> int:
        """``P``, the number of trainable scalars."""
        return self.offsets[-1]

    def check(self, vectors: Sequence[Tensor], field: str = "vectors") -> list[Tensor]:
        """``vectors`` as a list, validated against the parameter shapes.

        Raises:
            ValueError: wrong number of tensors or a shape differs from its parameter's.
        """
        vectors = list(vectors)
        if len(vectors) != len(self.params):
            raise ValueError(f"{field} must have one tensor per parameter ({len(self.params)}), got {len(vectors)}")
        for name, v, p in zip(self.names, vectors, self.params):
            if v.shape != p.shape:
                raise ValueError(f"{field}: tensor for {name!r} has shape {tuple(v.shape)}, expected {tuple(p.shape)}")
        return vectors

    def flatten(self, vectors: Sequence[Tensor]) -> Tensor:
        """Concatenate aligned tensors into one vector of length ``P``."""
        return torch.cat([v.reshape(-1) for v in self.check(vectors)])

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Split a length-``P`` vector into tensors shaped like the parameters."""
        if flat.shape != (self.dimension,):
            raise ValueError(f"flat vector must have shape ({self.dimension},), got {tuple(flat.shape)}")
        return [flat[a:b].view_as(p) for a, b, p in zip(self.offsets[:-1], self.offsets[1:], self.params)]

    def layer_matrix(self, vectors: Sequence[Tensor], layer: KroneckerLayer) -> Tensor:
        """``W_bar = [W, b]`` of ``vectors`` for ``layer``: shape ``(d_out, d_in)``."""
        weight = vectors[layer.weight_index].reshape(layer.d_out, -1)
        if layer.bias_index is None:
            return weight
        return torch.cat([weight, vectors[layer.bias_index].unsqueeze(1)], dim=1)

    def scatter_layer_matrix(self, matrix: Tensor, layer: KroneckerLayer, out: list[Tensor]) -> None:
        """Write a ``(d_out, d_in)`` matrix back into the weight and bias slots of ``out``."""
        weight = self.params[layer.weight_index]
        n_w = weight[0].numel()
        out[layer.weight_index] = matrix[:, :n_w].reshape(weight.shape)
        if layer.bias_index is not None:
            out[layer.bias_index] = matrix[:, n_w]

    def layer_indices(self, layer: KroneckerLayer) -> Tensor:
        """Positions in the flat vector of ``W_bar`` flattened row-major: shape ``(d_out * d_in,)``."""
        w_off, n_w = self.offsets[layer.weight_index], self.params[layer.weight_index][0].numel()
        rows = torch.arange(layer.d_out).unsqueeze(1)
        cols = w_off + rows * n_w + torch.arange(n_w)
        if layer.bias_index is not None:
            cols = torch.cat([cols, self.offsets[layer.bias_index] + rows], dim=1)
        return cols.reshape(-1)

    def other_indices(self) -> Tensor:
        """Flat positions of all *other* parameters, in parameter order."""
        if not self.other:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([torch.arange(self.offsets[i], self.offsets[i + 1]) for i in self.other])
