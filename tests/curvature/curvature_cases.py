"""Tiny float64 problems shared by the curvature tests, declared once as data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from natgrad.distributions import Bernoulli, Gaussian
from natgrad.losses import Loss, build_loss, likelihood_term
from natgrad.models import VAE, DeepAutoencoder


class ConvNet(nn.Module):
    """Conv2d(1->2, 3x3, pad 1) -> sigmoid -> Linear(50 -> 25): Bernoulli logits of a 5x5 image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(50, 25)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.sigmoid(self.conv(x)).flatten(1))


class NormNet(nn.Module):
    """Linear -> LayerNorm (an *other* module, diagonal block) -> tanh -> Linear, Gaussian
    output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.norm(self.fc1(x))))


def bernoulli_terms(out: Tensor, inputs: tuple[Tensor, ...]):
    return (likelihood_term(Bernoulli(out), inputs[0]),)


def gaussian_terms(out: Tensor, inputs: tuple[Tensor, ...]):
    return (likelihood_term(Gaussian(out), inputs[0]),)


def autoencoder(n: int = 4) -> Loss:
    torch.manual_seed(0)
    model = DeepAutoencoder((5, 3, 2), init="default")
    return build_loss(model, torch.rand(n, 5))


def vae(n: int = 4) -> Loss:
    torch.manual_seed(1)
    model = VAE((5, 4, 2), activation="tanh")
    return build_loss(model, torch.rand(n, 5), generator=torch.Generator().manual_seed(2))


def conv_net(n: int = 3) -> Loss:
    torch.manual_seed(3)
    return Loss.from_model(ConvNet(), (torch.rand(n, 1, 5, 5),), bernoulli_terms)


def norm_net(n: int = 4) -> Loss:
    torch.manual_seed(4)
    return Loss.from_model(NormNet(), (torch.randn(n, 4),), gaussian_terms)


@dataclass(frozen=True)
class Problem:
    """A tiny problem and what it supports, so tests select problems by property, not by name.

    Attributes:
        build: the loss at a fixed seed (call inside a float64 test).
        tridiagonal: every Kronecker layer is an ``nn.Linear`` on ``(N, d)`` inputs, in a chain, so
            block-tridiagonal K-FAC applies.
        dense_hessian: ``exact.dense_hessian`` agrees with ``exact.hessian_vector_product`` (not
            through ``LayerNorm`` in torch 2.13, where the two ``torch.func`` paths differ; no
            optimizer uses the Hessian).
    """

    build: Callable[[], Loss]
    tridiagonal: bool = True
    dense_hessian: bool = True


#: name -> problem.
PROBLEMS: dict[str, Problem] = {
    "autoencoder": Problem(autoencoder),
    "vae": Problem(vae),
    "conv_net": Problem(conv_net, tridiagonal=False),
    "norm_net": Problem(norm_net, dense_hessian=False),
}


def problems(**required: bool) -> list[str]:
    """Names of the problems with every property in ``required``, e.g.
    ``problems(tridiagonal=True)``.
    """
    return [
        name
        for name, p in PROBLEMS.items()
        if all(getattr(p, key) == value for key, value in required.items())
    ]


def build(name: str) -> Loss:
    """The loss of problem ``name``."""
    return PROBLEMS[name].build()


def deep_linear(n: int, bias: bool = True, sigma: float = 1.0) -> Loss:
    """A 4-3-2-4 network of Linear layers without nonlinearities, Gaussian output of std
    ``sigma``.
    """
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Linear(4, 3, bias=bias), nn.Linear(3, 2, bias=bias), nn.Linear(2, 4, bias=bias)
    )
    return Loss.from_model(
        model,
        (torch.randn(n, 4),),
        lambda out, inputs: (likelihood_term(Gaussian(out, sigma), inputs[0]),),
    )


def one_example_tanh(terms: Callable = bernoulli_terms) -> Loss:
    """A 5-4-3-5 tanh network on one example."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 5))
    return Loss.from_model(model, (torch.rand(1, 5),), terms)


@dataclass(frozen=True)
class KFACExactCase:
    """A regime where block-diagonal K-FAC with square-root statistics equals the GGN's diagonal
    blocks.

    In the style of curvlinops' ``KFAC_EXACT_CASES``. A layer's GGN block is
    ``(1/N) sum_{n,k} (a_n a_n^T) (x) (g_{k,n} g_{k,n}^T)``; K-FAC's ``A (x) B`` factorises the
    expectation, which is exact when either factor does not depend on the example.
    """

    name: str
    build: Callable[[], Loss]
    why: str


KFAC_EXACT_CASES = (
    KFACExactCase(
        "deep-linear-gaussian",
        lambda: deep_linear(8),
        "no nonlinearity and H = I / sigma^2: g_{k,n} = (later weights)^T e_k / sigma for every n",
    ),
    KFACExactCase(
        "deep-linear-gaussian-no-bias",
        lambda: deep_linear(8, bias=False),
        "as above, without bias columns",
    ),
    KFACExactCase(
        "deep-linear-gaussian-sigma", lambda: deep_linear(5, sigma=0.5), "as above, H = 4 I"
    ),
    KFACExactCase(
        "one-example-tanh-bernoulli",
        one_example_tanh,
        "N = 1: each expectation is one outer product",
    ),
    KFACExactCase(
        "one-example-tanh-gaussian",
        lambda: one_example_tanh(gaussian_terms),
        "N = 1, Gaussian output",
    ),
)


def random_vectors(loss: Loss, seed: int = 0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen) for p in loss.parameters().values()]


def flat(vectors) -> Tensor:
    return torch.cat([v.reshape(-1) for v in vectors])


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())
