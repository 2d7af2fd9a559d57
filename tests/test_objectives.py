"""The objective choice: the ELBO is today's loss bit for bit, and bad combinations are refused."""

from __future__ import annotations

import pytest
import torch

from natgrad.losses import build_loss
from natgrad.models import VAE, DeepAutoencoder
from natgrad.objectives import Objective, build_objective_loss


def _vae() -> VAE:
    torch.manual_seed(0)
    return VAE((6, 5, 3))


def test_the_default_objective_is_todays_loss_bitwise():
    model, x = _vae(), torch.rand(8, 6)
    eps = torch.randn(Objective().noise_shape(8, 3), generator=torch.Generator().manual_seed(1))
    ours, todays = (
        build_objective_loss(model, x, Objective(), eps=eps),
        build_loss(model, x, eps=eps),
    )
    assert torch.equal(ours.value, todays.value)
    params = list(model.parameters())
    for a, b in zip(
        torch.autograd.grad(ours.value, params), torch.autograd.grad(todays.value, params)
    ):
        assert torch.equal(a, b)


def test_the_iwae_objective_draws_k_samples_per_example():
    objective = Objective("iwae", 5, "dreg")
    assert objective.noise_shape(8, 3) == (8, 5, 3)
    loss = build_objective_loss(
        _vae(), torch.rand(8, 6), objective, generator=torch.Generator().manual_seed(2)
    )
    assert loss.inputs[1].shape == (8, 5, 3)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"name": "bound"}, r"Invalid objective: 'bound'; allowed: elbo, iwae"),
        ({"name": "iwae", "samples": 0}, "Invalid samples: 0; allowed: an integer >= 1"),
        ({"name": "iwae", "samples": 2.5}, "Invalid samples: 2.5; allowed: an integer >= 1"),
        ({"samples": 5}, "Invalid samples: 5; allowed: 1 with objective 'elbo'"),
        (
            {"estimator": "dreg"},
            "Invalid estimator: 'dreg'; allowed: 'plain' with objective 'elbo'",
        ),
        (
            {"name": "iwae", "estimator": "vimco"},
            r"Invalid estimator: 'vimco'; allowed: plain, dreg",
        ),
    ],
)
def test_invalid_objectives_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        Objective(**fields)


def test_the_bound_on_an_autoencoder_is_refused_naming_it():
    model = DeepAutoencoder((6, 4, 2), init="default")
    with pytest.raises(TypeError, match="needs a VAE .*got DeepAutoencoder"):
        build_objective_loss(model, torch.rand(4, 6), Objective("iwae", 3))
