"""The models and toy data of the Adam -> K-FAC examples, written as a PyTorch user would.

Nothing here knows about natgrad except :func:`elbo_terms`, the VAE's loss written as natgrad
loss terms (the one function a VAE needs beyond :func:`negative_elbo`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from natgrad import Bernoulli, DiagonalGaussianPosterior, kl_term, likelihood_term


def blobs(n: int = 512, classes: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` points in 2-D around ``classes`` centres on a circle, and their labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=gen)
    angle = 2 * torch.pi * labels / classes
    centres = torch.stack([angle.cos(), angle.sin()], dim=1)
    return centres + 0.5 * torch.randn(n, 2, generator=gen), labels


def make_classifier(classes: int = 3) -> nn.Sequential:
    """An MLP with LayerNorm and Dropout: a plain ``nn.Sequential`` that returns logits."""
    return nn.Sequential(
        nn.Linear(2, 32), nn.LayerNorm(32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, classes)
    )


@torch.no_grad()
def test_cross_entropy(model: nn.Module, x: Tensor, labels: Tensor) -> float:
    """Mean cross-entropy in evaluation mode (no Dropout)."""
    model.eval()
    value = float(F.cross_entropy(model(x), labels))
    model.train()
    return value


def bars(n: int = 256, seed: int = 0) -> Tensor:
    """``n`` binary 8x8 images: a random horizontal bar, in half of them also a vertical one: ``(n,
    1, 8, 8)``.
    """
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 8, 8)
    for image, (row, col, both) in zip(images, torch.randint(8, (n, 3), generator=gen)):
        image[0, row, :] = 1.0
        if both % 2:
            image[0, :, col] = 1.0
    return images


class ConvVAE(nn.Module):
    """Conv2d encoder, ConvTranspose2d decoder; draws its reparameterisation noise in
    ``forward``.
    """

    def __init__(self, latent: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),
            nn.Softplus(),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 2 * latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, 8 * 4 * 4),
            nn.Softplus(),
            nn.Unflatten(1, (8, 4, 4)),
            nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        # pixel logits (N, 1, 8, 8), posterior mean, log variance
        return (
            self.decoder(z),
            mu,
            log_var,
        )


def negative_elbo(out: tuple[Tensor, Tensor, Tensor], x: Tensor) -> Tensor:
    """Bernoulli NLL plus ``KL(q(z|x) || N(0, I))``, averaged over the batch (nats per image)."""
    logits, mu, log_var = out
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mu**2 + log_var.exp() - log_var - 1.0).sum(1)
    return (nll + kl).mean()


def elbo_terms(out: tuple[Tensor, Tensor, Tensor], batch: tuple[Tensor, ...]):
    """:func:`negative_elbo` as natgrad loss terms, each with its exact output curvature."""
    logits, mu, log_var = out
    return likelihood_term(Bernoulli(logits), batch[0]), kl_term(
        DiagonalGaussianPosterior(mu, log_var)
    )
