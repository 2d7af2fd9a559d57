"""The learned-variance Gaussian likelihood ('gaussian-learned') end to end: model, loss,
curvature.
"""

import torch

from natgrad.curvature import BlockDiagonalKFAC, CurvatureConfig, OutputGradientEstimator
from natgrad.curvature.exact import dense_ggn, ggn_vector_product
from natgrad.distributions import GaussianLearnedVariance
from natgrad.losses import build_loss
from natgrad.models import VAE, DeepAutoencoder


def test_decoder_outputs_mean_and_log_variance(float64):
    model = DeepAutoencoder((6, 4, 2), likelihood="gaussian-learned", init="default")
    out = model(torch.randn(3, 6))
    assert isinstance(out.likelihood, GaussianLearnedVariance)
    assert out.likelihood.mean.shape == (3, 6) and out.likelihood.log_var.shape == (3, 6)
    vae = VAE((6, 4, 2), likelihood="gaussian-learned")
    assert vae(torch.randn(3, 6)).likelihood.mean.shape == (3, 6)


def test_ggn_uses_the_fisher_of_mean_and_log_variance(float64):
    """For (m, v) outputs the curvature is diag(e^{-v}, 1/2): GGN = J^T diag(e^-v, 1/2) J
    exactly.
    """
    torch.manual_seed(0)
    model = DeepAutoencoder((5, 3, 2), likelihood="gaussian-learned", init="default").double()
    x = torch.randn(4, 5)
    loss = build_loss(model, x)
    params = dict(model.named_parameters())
    flat = lambda p: torch.func.functional_call(model, p, (x,)).likelihood  # noqa: E731
    jac = torch.func.jacrev(lambda p: torch.cat(flat(p).params, -1))(params)
    j = torch.cat([jac[k].reshape(4, 10, -1) for k in params], -1)  # (N, 2d, P)
    out = flat(params)
    c = torch.cat([torch.exp(-out.log_var), torch.full_like(out.log_var, 0.5)], -1).detach()
    expected = torch.einsum("nop,no,noq->pq", j, c, j) / 4
    dense = dense_ggn(loss)
    torch.testing.assert_close(dense, expected, rtol=1e-10, atol=1e-12)
    v = [torch.randn_like(p) for p in model.parameters()]
    product = torch.cat([t.flatten() for t in ggn_vector_product(loss, v)])
    torch.testing.assert_close(
        product, dense @ torch.cat([t.flatten() for t in v]), rtol=1e-10, atol=1e-12
    )


def test_kfac_captures_both_output_heads(float64):
    """One Linear layer, one example, square-root statistics: K-FAC equals the exact GGN block."""
    torch.manual_seed(1)
    model = DeepAutoencoder((4, 3), likelihood="gaussian-learned", init="default").double()
    loss = build_loss(model, torch.randn(1, 4))
    kfac = BlockDiagonalKFAC(model, CurvatureConfig(estimator=OutputGradientEstimator.SQUARE_ROOT))
    kfac.update(kfac.capture(loss))
    kfac.refresh()
    dense = dense_ggn(loss)
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    block = dense[n_enc:, n_enc:]
    approx = kfac.to_dense()[n_enc:, n_enc:]
    assert model.decoder[-1].out_features == 8  # mean and log-variance of 4 pixels
    torch.testing.assert_close(approx, block, rtol=1e-10, atol=1e-12)
