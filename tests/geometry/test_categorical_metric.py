"""The local metric of softmax (Categorical) outputs: f''(1) (diag(p) - p p^T), pulled back = the
GGN.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from natgrad.curvature.exact import dense_ggn
from natgrad.distributions import Categorical
from natgrad.geometry import NoLocalMetricError, get_divergence
from natgrad.geometry.pullback import PulledBackMetric, flat_parameters, unflatten
from natgrad.losses import cross_entropy


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """``sum_k p_k log(p_k / q_k)`` written out, independent of natgrad."""
    log_p, log_q = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum()


def test_kl_metric_is_the_hessian_of_the_kl_at_zero(float64):
    logits = torch.randn(1, 4, generator=torch.Generator().manual_seed(51)) * 2
    expected = hessian(lambda delta: categorical_kl(logits, logits + delta))(
        torch.zeros_like(logits)
    )
    (metric,) = get_divergence("kl").output_metric(Categorical(logits))
    torch.testing.assert_close(metric, expected.reshape(1, 4, 4), rtol=1e-12, atol=1e-14)
    reverse = hessian(lambda delta: categorical_kl(logits + delta, logits))(
        torch.zeros_like(logits)
    )
    torch.testing.assert_close(
        get_divergence("reverse_kl").output_metric(Categorical(logits))[0],
        reverse.reshape(1, 4, 4),
        rtol=1e-12,
        atol=1e-14,
    )


def test_pulled_back_kl_metric_is_the_cross_entropy_ggn(float64):
    torch.manual_seed(52)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))
    x, labels = torch.randn(6, 3), torch.randint(4, (6,))
    theta = flat_parameters(model)
    metric = PulledBackMetric(
        lambda t: [Categorical(functional_call(model, unflatten(model, t), (x,)))],
        theta,
        get_divergence("kl"),
    )
    dense = metric.to_dense()
    torch.testing.assert_close(
        dense, dense_ggn(cross_entropy(model, x, labels)), rtol=1e-10, atol=1e-13
    )
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(53))
    torch.testing.assert_close(metric.matvec(v), dense @ v, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(metric.quadratic_form(v), v @ dense @ v, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", ["tv", "w2", "mmd"])
def test_divergences_without_a_categorical_metric_say_so(name):
    with pytest.raises(NoLocalMetricError, match="Categorical"):
        get_divergence(name).output_metric(Categorical(torch.zeros(1, 3)))
