import pytest
import torch

from natgrad.distributions import (
    Bernoulli,
    DiagonalGaussianPosterior,
    Gaussian,
    GaussianLearnedVariance,
)
from natgrad.models import ARCHITECTURES, VAE, DeepAutoencoder
from natgrad.models.init import fan_in_init_, sparse_init_


@pytest.mark.parametrize("problem", sorted(ARCHITECTURES))
def test_paper_architectures_mirror_and_count(problem):
    model = DeepAutoencoder.for_problem(problem)
    sizes = ARCHITECTURES[problem]
    enc = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    dec = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert [layer.in_features for layer in enc] + [enc[-1].out_features] == list(sizes)
    assert [layer.in_features for layer in dec] + [dec[-1].out_features] == list(sizes[::-1])
    expected = (
        2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        + 2 * sum(sizes[1:])
        - sizes[-1]
        + sizes[0]
    )
    assert sum(p.numel() for p in model.parameters()) == expected
    # linear code layer: the encoder ends with a Linear, no nonlinearity after it
    assert isinstance(model.encoder[-1], torch.nn.Linear)


def test_sparse_init_has_15_nonzero_incoming_weights_and_zero_bias():
    layer = torch.nn.Linear(100, 40)
    sparse_init_(layer, generator=torch.Generator().manual_seed(0))
    assert ((layer.weight != 0).sum(1) == 15).all()
    assert (layer.bias == 0).all()


def test_fan_in_init_is_truncated_at_two_std_with_variance_one_over_fan_in():
    layer = torch.nn.Linear(400, 500)
    fan_in_init_(layer, generator=torch.Generator().manual_seed(0))
    w = layer.weight * 400**0.5  # unit variance if the truncation's rescaling is right
    assert w.abs().max() <= 2.0 / 0.87962566103423978 + 1e-6
    assert abs(w.var().item() - 1.0) < 0.02  # 200,000 draws: standard error of the variance 0.003
    assert abs(w.mean().item()) < 0.01
    assert (layer.bias == 0).all()


def test_bernoulli_nll_is_cross_entropy_and_curvature_is_p_one_minus_p():
    logits = torch.tensor([[0.3, -1.2]])
    x = torch.tensor([[1.0, 0.0]])
    d = Bernoulli(logits)
    p = torch.sigmoid(logits)
    ce = -(x * p.log() + (1 - x) * (1 - p).log()).sum(1)
    torch.testing.assert_close(d.nll(x), ce)
    torch.testing.assert_close(d.curvature_diagonal()[0], p * (1 - p))


def test_curvature_diagonal_is_the_hessian_of_the_nll_for_natural_parameters(float64):
    x = torch.rand(1, 3)
    for make in (Bernoulli, lambda z: Gaussian(z, sigma=0.7)):
        z = torch.randn(1, 3)
        hess = torch.func.hessian(lambda t: make(t).nll(x).sum())(z).reshape(3, 3)
        torch.testing.assert_close(hess, torch.diag(make(z).curvature_diagonal()[0].flatten()))


def test_learned_variance_curvature_is_the_expected_hessian(float64):
    m, v = torch.randn(1, 2), torch.randn(1, 2)
    d = GaussianLearnedVariance(m, v)
    torch.manual_seed(0)
    # y ~ N(m, e^v)
    ys = torch.stack([m + torch.exp(0.5 * v) * torch.randn(m.shape) for _ in range(20000)])
    h = torch.func.hessian(
        lambda mm, vv: GaussianLearnedVariance(mm, vv).nll(ys.squeeze(1)).mean(), argnums=(0, 1)
    )(m, v)
    torch.testing.assert_close(
        torch.diagonal(h[0][0].reshape(2, 2)),
        d.curvature_diagonal()[0].flatten(),
        rtol=0,
        atol=1e-12,
    )
    # E[d2/dv2] = 1/2 up to Monte Carlo error (std of (y-m)^2 e^-v / 2 is 1/sqrt(2) per sample)
    torch.testing.assert_close(
        torch.diagonal(h[1][1].reshape(2, 2)),
        d.curvature_diagonal()[1].flatten(),
        rtol=0,
        atol=5 * 0.71 / 20000**0.5,
    )


def test_kl_closed_form_and_hessian(float64):
    mu, v = torch.randn(2, 3), torch.randn(2, 3)
    q = DiagonalGaussianPosterior(mu, v)
    p = torch.distributions.Normal(mu, (0.5 * v).exp())
    ref = torch.distributions.kl_divergence(p, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(q.kl_to_standard_normal(), ref)
    h = torch.func.hessian(
        lambda a, b: DiagonalGaussianPosterior(a, b).kl_to_standard_normal().sum(), argnums=(0, 1)
    )(mu, v)
    torch.testing.assert_close(h[0][0].reshape(6, 6), torch.eye(6))
    torch.testing.assert_close(h[1][1].reshape(6, 6), torch.diag(0.5 * v.exp().flatten()))
    assert h[0][1].abs().max() == 0


def test_vae_forward_shapes_and_fixed_noise_is_deterministic():
    vae = VAE((20, 8, 3), likelihood="gaussian")
    x = torch.randn(5, 20)
    eps = torch.randn(5, 3)
    a, b = vae(x, eps), vae(x, eps)
    assert a.z.shape == (5, 3) and a.likelihood.mean.shape == (5, 20)
    torch.testing.assert_close(a.likelihood.mean, b.likelihood.mean)


@pytest.mark.parametrize(
    "bad", [dict(likelihood="poisson"), dict(activation="swish"), dict(init="xavier")]
)
def test_bad_model_settings_name_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        DeepAutoencoder((10, 6, 4), **bad)
