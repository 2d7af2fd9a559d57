"""Tiny float64 problems shared by the curvature tests, declared once as data."""
from __future__ import annotations

from collections.abc import Callable

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
    """Linear -> LayerNorm (an *other* module, diagonal block) -> tanh -> Linear, Gaussian output."""

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


#: name -> builder of a loss at a fixed seed (call inside a float64 test).
PROBLEMS: dict[str, Callable[[], Loss]] = {
    "autoencoder": autoencoder,
    "vae": vae,
    "conv_net": conv_net,
    "norm_net": norm_net,
}


def random_vectors(loss: Loss, seed: int = 0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen) for p in loss.parameters().values()]


def flat(vectors) -> Tensor:
    return torch.cat([v.reshape(-1) for v in vectors])


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())
