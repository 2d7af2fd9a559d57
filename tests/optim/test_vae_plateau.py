"""The VAE fix of docs/vae-training.md as a regression test, on the synthetic 8x8 images.

With the autoencoder papers' logistic units and Martens & Grosse's damping, K-FAC's first steps
remove the posterior's image-independent KL and leave no active latent unit (posterior collapse);
with natgrad's defaults (tanh units, lambda_0 = 1 with gamma tied) the same number of steps ends
with active units and a lower negative ELBO. Burda et al.'s active units (Cov_x(E_q[z_j|x]) > 0.01)
measure the collapse directly.
"""

from __future__ import annotations

import torch

from natgrad.experiments.data import synthetic_data
from natgrad.experiments.metrics import elbo_terms
from natgrad.losses import build_loss
from natgrad.models import VAE
from natgrad.optim import KFAC

STEPS, BATCH = 40, 500


def train_vae(activation: str, preset: str) -> dict[str, float]:
    """STEPS K-FAC steps (full VAE curvature) on the synthetic training images; the final ELBO
    terms.
    """
    data = synthetic_data()
    torch.manual_seed(0)
    model = VAE([64, 32, 16, 4], activation=activation, generator=torch.Generator().manual_seed(0))
    optimizer = KFAC(model, preset=preset, seed=0)
    order = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = data.train[torch.randint(len(data.train), (BATCH,), generator=order)]
        eps = torch.randn(BATCH, model.latent_dim, generator=order)

        def closure():
            optimizer.zero_grad()
            loss = build_loss(model, x, eps=eps)
            loss.value.backward()
            return loss

        optimizer.step(closure)
    return elbo_terms(model, data.train, generator=torch.Generator().manual_seed(2))


def test_natgrad_defaults_leave_the_plateau_where_the_papers_settings_collapse():
    before = train_vae("sigmoid", "paper")
    after = train_vae("tanh", "natgrad")
    assert before["active_units"] == 0 and before["kl"] < 0.1
    assert after["active_units"] >= 2 and after["kl"] > 1.0
    assert after["neg_elbo"] < before["neg_elbo"] - 2.0
