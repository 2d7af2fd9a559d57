r"""Natural Neural Networks: the whitened reparametrisation of each layer (PRONG).

Desjardins, Simonyan, Pascanu & Kavukcuoglu, "Natural Neural Networks", NIPS 2015 (section 6 of
../shared/PAPERS.md). Notation: ``h_{i-1}`` the input of layer ``i`` (the previous layer's output,
or the data), ``c`` its mean and ``Sigma`` its covariance on ``N_s`` samples, ``Sigma = E D E^T``,
``epsilon`` the regulariser.

A whitened layer computes

.. math::  h_i = f_i(V_i U_{i-1} (h_{i-1} - c_{i-1}) + d_i),
           \qquad U = (D + \epsilon I)^{-1/2} E^T  \text{ (PCA whitening)},

with ``U`` and ``c`` buffers (never trained) and ``(V, d)`` the parameters. The canonical layer it
represents is ``W = V U``, ``b = d - W c``. Every ``T`` steps PRONG re-estimates ``(U, c)`` and
updates ``(V, d)`` so that ``(W, b)`` - hence the network's function - is unchanged:

.. math::  V \leftarrow W U_{new}^{-1} = V U_{old} U_{new}^{-1}, \qquad
           d \leftarrow b + W c_{new} = d + W (c_{new} - c_{old}),

an affine map of ``(V, d)``; :class:`ChangeOfBasis` applies its linear part to tangent vectors
(momentum buffers). Because the function is preserved, the layer inputs of all layers can be
captured in one forward pass and re-estimated bottom-up in one sweep (Alg. 1).

On the estimation sample the whitened inputs ``U (h - c)`` have covariance
``U Sigma U^T = D (D + epsilon I)^{-1}``: the identity up to ``epsilon`` on every direction of
non-zero variance.

PRONG+ (``batch_norm=True``): batch normalisation of the pre-activation ``s = V U (h - c)`` of the
hidden layers (those followed by a nonlinearity), ``gain * (s - mean) / sqrt(var + bn_eps) + d``,
as in the third-party replication cited in PAPERS.md. A re-estimation shifts ``s`` by the constant
``W (c_old - c_new)``, which the batch mean removes; the running mean is shifted by the same amount,
so training- and evaluation-mode outputs are both preserved and ``d`` is left unchanged.

Departures: PCA whitening (the paper's ``U``); the replication used ZCA ``E (D + eps)^{-1/2} E^T``,
which differs by a rotation of ``V``. Statistics use the biased (``1/N_s``) covariance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from natgrad.validation import require


@dataclass(frozen=True)
class ChangeOfBasis:
    r"""The linear part of one re-estimation: ``dV -> dV A``, ``dd -> dd + dV s``.

    ``A = U_{old} U_{new}^{-1}`` (``(d_in, d_in)``), ``s = U_{old} (c_{new} - c_{old})``
    (``(d_in,)``), or ``None`` for a batch-normalised layer, whose constant shift is absorbed by the
    normalisation.
    """

    basis: Tensor
    shift: Tensor | None

    def apply(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """``(V, d)``, or a tangent vector of them, in the new coordinates."""
        new_bias = bias if self.shift is None else bias + weight @ self.shift
        return weight @ self.basis, new_bias


def whitening_statistics(inputs: Tensor, epsilon: float) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(c, U, U^{-1})`` from samples ``(N_s, d)``: mean, ``(D + eps)^{-1/2} E^T`` and ``E (D +
    eps)^{1/2}``.

    Computed in float64 (a few times per thousand steps) and returned in the inputs' dtype.

    Raises:
        ValueError: ``epsilon <= 0`` or fewer than two samples.
    """
    require(epsilon > 0, "whitening epsilon", epsilon, "a number > 0")
    if inputs.dim() != 2 or inputs.shape[0] < 2:
        raise ValueError(f"whitening needs (N_s >= 2, d) samples, got shape {tuple(inputs.shape)}")
    h = inputs.detach().to(torch.float64)
    centre = h.mean(dim=0)
    centred = h - centre
    covariance = centred.T @ centred / h.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    scale = (eigenvalues.clamp_min(0.0) + epsilon).sqrt()
    whitening = eigenvectors.T / scale.unsqueeze(1)
    inverse = eigenvectors * scale.unsqueeze(0)
    dtype = inputs.dtype
    return centre.to(dtype), whitening.to(dtype), inverse.to(dtype)


class WhitenedLinear(nn.Module):
    r"""``V U (h - c) + d`` (PRONG) or ``gain * BN(V U (h - c)) + d`` (PRONG+).

    Parameters ``weight`` = ``V`` ``(d_out, d_in)``, ``bias`` = ``d`` ``(d_out,)`` and, for PRONG+,
    ``gain`` ``(d_out,)``; buffers ``whitening`` = ``U`` ``(d_in, d_in)``, ``centre`` = ``c``
    ``(d_in,)``, and for PRONG+ the running mean and variance of the normalisation.
    """

    def __init__(
        self,
        linear: nn.Linear,
        batch_norm: bool = False,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if linear.bias is None:
            raise ValueError(
                "WhitenedLinear needs an nn.Linear with a bias (d absorbs the centring)"
            )
        d_out, d_in = linear.weight.shape
        factory = {"dtype": linear.weight.dtype, "device": linear.weight.device}
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())
        self.register_buffer("whitening", torch.eye(d_in, **factory))
        self.register_buffer("centre", torch.zeros(d_in, **factory))
        self.batch_norm = batch_norm
        self.bn_momentum = bn_momentum
        self.bn_eps = bn_eps
        if batch_norm:
            self.gain = nn.Parameter(torch.ones(d_out, **factory))
            self.register_buffer("running_mean", torch.zeros(d_out, **factory))
            self.register_buffer("running_var", torch.ones(d_out, **factory))

    @property
    def in_features(self) -> int:
        """``d_in``, the width of ``V``'s input."""
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        """``d_out``, the width of the output."""
        return int(self.weight.shape[0])

    def forward(self, h: Tensor) -> Tensor:
        """``V U (h - c) + d`` (PRONG), or ``gain * BN(V U (h - c)) + d`` (PRONG+)."""
        white = F.linear(h - self.centre, self.whitening)  # U (h - c): (N, d_in)
        if not self.batch_norm:
            return F.linear(white, self.weight, self.bias)
        return self._normalise(F.linear(white, self.weight)) * self.gain + self.bias

    def _normalise(self, s: Tensor) -> Tensor:
        if self.training:
            # (N, d_out), or (N k, d_out) for k samples per example
            rows = s.reshape(-1, s.shape[-1])
            mean, var = rows.mean(dim=0), rows.var(dim=0, unbiased=False)
            with torch.no_grad():
                n = rows.shape[0]
                unbiased = var.detach() * n / max(n - 1, 1)
                self.running_mean.lerp_(mean.detach(), self.bn_momentum)
                self.running_var.lerp_(unbiased, self.bn_momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (s - mean) / torch.sqrt(var + self.bn_eps)

    def canonical(self) -> tuple[Tensor, Tensor]:
        """``(W, b) = (V U, d - V U c)``, the ordinary linear layer this one represents (without
        BN).
        """
        weight = self.weight.detach() @ self.whitening
        return weight, self.bias.detach() - weight @ self.centre

    @torch.no_grad()
    def reparametrise(self, inputs: Tensor, epsilon: float) -> ChangeOfBasis:
        """Re-estimate ``(U, c)`` on ``inputs`` ``(N_s, d_in)`` and update ``(V, d)`` to keep the
        function.

        Returns the :class:`ChangeOfBasis` applied, for the optimizer's momentum buffers.
        """
        centre, whitening, inverse = whitening_statistics(inputs, epsilon)
        old_whitening, old_centre = self.whitening.clone(), self.centre.clone()
        canonical_weight = self.weight @ old_whitening
        change = ChangeOfBasis(
            basis=old_whitening @ inverse,
            shift=None if self.batch_norm else old_whitening @ (centre - old_centre),
        )
        new_weight, new_bias = change.apply(self.weight, self.bias)
        self.weight.copy_(new_weight)
        self.bias.copy_(new_bias)
        if self.batch_norm:
            self.running_mean.add_(canonical_weight @ (old_centre - centre))
        self.whitening.copy_(whitening)
        self.centre.copy_(centre)
        return change

    def extra_repr(self) -> str:
        """The sizes and whether the layer is batch-normalised."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"batch_norm={self.batch_norm}"
        )


def whiten(model: nn.Module, batch_norm: bool = False) -> list[WhitenedLinear]:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`WhitenedLinear` with ``U =
    I, c = 0``.

    The function is unchanged for PRONG. For PRONG+ (``batch_norm``) the hidden layers - a Linear
    followed by another module in its ``nn.Sequential`` (the nonlinearity) - are batch-normalised;
    output, code and VAE-head layers are not. Returns the whitened layers in forward
    (registration) order. Build the optimizer *after* this call: the parameters are new tensors.
    """
    layers: list[WhitenedLinear] = []
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for position, (name, child) in enumerate(children):
            if not isinstance(child, nn.Linear):
                continue
            hidden = isinstance(parent, nn.Sequential) and position + 1 < len(children)
            layer = WhitenedLinear(child, batch_norm=batch_norm and hidden)
            setattr(parent, name, layer)
    layers.extend(m for m in model.modules() if isinstance(m, WhitenedLinear))
    return layers


@contextmanager
def capture_layer_inputs(layers: Sequence[WhitenedLinear]) -> Iterator[list[list[Tensor]]]:
    """Record the (detached) input of each layer during forward passes inside the block.

    Yields one list per layer, appended to at each call of that layer.
    """
    records: list[list[Tensor]] = [[] for _ in layers]

    def hook_for(store: list[Tensor]) -> Callable:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            # one row per example (and sample)
            store.append(args[0].detach().reshape(-1, args[0].shape[-1]))

        return hook

    handles = [
        layer.register_forward_pre_hook(hook_for(store)) for layer, store in zip(layers, records)
    ]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def reparametrise_all(
    layers: Sequence[WhitenedLinear], inputs: Sequence[Tensor], epsilon: float
) -> list[ChangeOfBasis]:
    """One PRONG re-estimation of every layer from its captured ``inputs`` (Alg. 1, bottom-up)."""
    if len(inputs) != len(layers):
        raise ValueError(
            f"got inputs for {len(inputs)} layers, the model has {len(layers)} whitened layers"
        )
    return [layer.reparametrise(x, epsilon) for layer, x in zip(layers, inputs)]
