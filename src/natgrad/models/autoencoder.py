"""Deep autoencoders of Hinton & Salakhutdinov (2006), Martens (2010) and Martens & Grosse
(2015).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from natgrad.distributions import Bernoulli, Gaussian, GaussianLearnedVariance, OutputDistribution
from natgrad.models.init import initialise_
from natgrad.models.mlp import mlp
from natgrad.validation import require

#: Encoder sizes of the three benchmark problems (the decoder mirrors them); the code layer is
#: linear.
ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "mnist": (784, 1000, 500, 250, 30),
    "curves": (784, 400, 200, 100, 50, 25, 6),
    "faces": (625, 2000, 1000, 500, 30),
}
#: Output likelihood of each problem: logistic + cross-entropy, or linear + squared error.
LIKELIHOODS: dict[str, str] = {"mnist": "bernoulli", "curves": "bernoulli", "faces": "gaussian"}
#: 'gaussian-learned': the decoder outputs a mean and a log-variance per pixel (twice the width).
LIKELIHOOD_NAMES = ("bernoulli", "gaussian", "gaussian-learned")


def check_likelihood(name: str) -> str:
    """``name`` if it is one of :data:`LIKELIHOOD_NAMES`.

    Raises:
        ValueError: an unknown likelihood (the message lists the known ones).
    """
    require(name in LIKELIHOOD_NAMES, "likelihood", name, ", ".join(LIKELIHOOD_NAMES))
    return name


def output_width(name: str, data_dim: int) -> int:
    """Width of the decoder's last linear layer for likelihood ``name`` on ``data_dim`` pixels."""
    return 2 * data_dim if check_likelihood(name) == "gaussian-learned" else data_dim


def likelihood_from_outputs(name: str, outputs: Tensor) -> OutputDistribution:
    """The output distribution ``name`` built on the decoder's last linear layer."""
    if check_likelihood(name) == "bernoulli":
        return Bernoulli(outputs)
    if name == "gaussian":
        return Gaussian(outputs, sigma=1.0)
    mean, log_var = outputs.chunk(2, dim=-1)
    return GaussianLearnedVariance(mean, log_var)


def decoder_sizes(sizes: tuple[int, ...], likelihood: str) -> list[int]:
    """The decoder mirrors the encoder ``sizes``, its last layer widened for the likelihood."""
    mirrored = list(sizes[::-1])
    mirrored[-1] = output_width(likelihood, sizes[0])
    return mirrored


def problem_arguments(problem: str, kwargs: dict) -> tuple[tuple[int, ...], dict]:
    """Sizes of a benchmark problem and ``kwargs`` with its likelihood, for ``for_problem``."""
    require(problem in ARCHITECTURES, "problem", problem, ", ".join(sorted(ARCHITECTURES)))
    return ARCHITECTURES[problem], {"likelihood": LIKELIHOODS[problem], **kwargs}


@dataclass
class AutoencoderOutput:
    """What a deep autoencoder returns: the likelihood of the input given its code."""

    likelihood: OutputDistribution
    code: Tensor


class DeepAutoencoder(nn.Module):
    """Encoder ``sizes`` with logistic hidden units and a linear code layer; mirrored decoder.

    The decoder's last layer is linear and parameterises ``likelihood`` ('bernoulli' logits for
    MNIST and CURVES, 'gaussian' mean with unit variance for FACES). ``init='sparse'`` is Martens'
    sparse initialisation (15 non-zero N(0,1) incoming weights per unit, zero biases).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        likelihood: str = "bernoulli",
        activation: str = "sigmoid",
        init: str = "sparse",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.likelihood_name = check_likelihood(likelihood)
        self.encoder = mlp(self.sizes, activation, final_activation=False)
        self.decoder = mlp(
            decoder_sizes(self.sizes, likelihood), activation, final_activation=False
        )
        initialise_(self, init, generator)

    @classmethod
    def for_problem(cls, problem: str, **kwargs) -> "DeepAutoencoder":
        """The paper architecture for 'mnist', 'curves' or 'faces'."""
        sizes, arguments = problem_arguments(problem, kwargs)
        return cls(sizes, **arguments)

    def forward(self, x: Tensor) -> AutoencoderOutput:
        """The decoder's likelihood of ``x`` and the code."""
        code = self.encoder(x.flatten(1))
        return AutoencoderOutput(
            likelihood_from_outputs(self.likelihood_name, self.decoder(code)), code
        )
