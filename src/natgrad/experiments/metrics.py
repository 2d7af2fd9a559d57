r"""Evaluation metrics of the autoencoder and VAE papers, computed in chunks over whole data sets.

* **Reconstruction error** (Hinton & Salakhutdinov 2006, Fig. 2; the experiments of Martens 2010;
  Martens & Grosse 2015, section 13; Sutskever et al. 2013, Table 1): the squared error summed over
  pixels and averaged over examples,

  .. math::  E = \frac{1}{N} \sum_{n=1}^N \sum_{j=1}^D (x_{nj} - \hat x_{nj})^2,

  where :math:`\hat x` is the mean of the output distribution: the sigmoid probabilities for the
  Bernoulli outputs of MNIST and CURVES, the linear outputs for the Gaussian output of FACES.
  For a VAE the reconstruction is the decoder's mean at the posterior mean ``z = mu(x)``
  (deterministic; a choice of natgrad, the papers report no VAE reconstruction error).
* **Negative log-likelihood** of the autoencoder, :math:`-\frac1N\sum_n \log r(x_n | f(x_n))` in
  nats (the training objective without the L2 penalty).
* **Negative ELBO** in nats per example (Kingma & Welling 2014, SGVB estimator B, section 2.3
  [section
  number unverified]): with one reparameterised sample per example,
  :math:`-\mathcal L = -\log p(x|z) + \mathrm{KL}(q(z|x) \| N(0, I))`, KL in closed form (App. B).
* **Importance-weighted log-likelihood** (Burda, Grosse & Salakhutdinov 2016, section 3):

  .. math::  \mathcal L_k(x) = \log \frac1k \sum_{i=1}^k \frac{p(x, z_i)}{q(z_i|x)},
             \quad z_i \sim q(z|x),

  computed as a log-mean-exp of log-weights. :math:`\mathcal L_1` is the ELBO, and
  :math:`\mathcal L_1 \le \mathcal L_k \le \mathcal L_{k+1} \le \log p(x)` in expectation (their
  theorem on the bound's monotonicity); the paper evaluates with k = 5000 (yburda/iwae,
  ``experiments.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from natgrad.iwae import log_importance_weights
from natgrad.models import VAE
from natgrad.validation import require

#: The metric (without its ``train.``/``test.`` split) each model kind is judged by.
HEADLINE_METRICS = {"autoencoder": "reconstruction_error", "vae": "neg_elbo"}


def _chunks(x: Tensor, chunk_size: int) -> Iterator[Tensor]:
    require(chunk_size >= 1, "chunk_size", chunk_size, "an integer >= 1")
    for start in range(0, x.shape[0], chunk_size):
        yield x[start : start + chunk_size]


def _reconstruction(model: nn.Module, x: Tensor) -> Tensor:
    if isinstance(model, VAE):
        return model.decode(model.encode(x).mu).mean
    return model(x).likelihood.mean


@torch.no_grad()
def reconstruction_error(model: nn.Module, x: Tensor, chunk_size: int = 1000) -> float:
    """Squared error summed over pixels, averaged over the examples of ``x`` (see module
    docstring).
    """
    total = 0.0
    for chunk in _chunks(x, chunk_size):
        recon = _reconstruction(model, chunk).reshape(chunk.shape[0], -1)
        total += float(((chunk.reshape(chunk.shape[0], -1) - recon) ** 2).sum(dtype=torch.float64))
    return total / x.shape[0]


@torch.no_grad()
def negative_log_likelihood(model: nn.Module, x: Tensor, chunk_size: int = 1000) -> float:
    """Mean over examples of ``-log r(x | f(x))`` in nats, for a deterministic autoencoder."""
    total = 0.0
    for chunk in _chunks(x, chunk_size):
        total += float(model(chunk).likelihood.nll(chunk).sum(dtype=torch.float64))
    return total / x.shape[0]


@torch.no_grad()
def elbo_terms(
    model: VAE, x: Tensor, chunk_size: int = 1000, generator: torch.Generator | None = None
) -> dict[str, float]:
    r"""Negative ELBO, its KL term and the active latent units of ``model`` on ``x``.

    * ``neg_elbo``: nats per example, one reparameterised sample per example.
    * ``kl``: :math:`\frac1N \sum_n \mathrm{KL}(q(z|x_n) \| N(0, I))` in nats, the part of the
      bound spent on the code; 0 on the posterior-collapse plateau (posterior = prior).
    * ``active_units``: the number of latent units :math:`j` with
      :math:`\mathrm{Cov}_x(\mathbb E_{q(z|x)}[z_j]) > 0.01` (Burda et al. 2016, section 5.2).
    """
    total, kl, means = 0.0, 0.0, []
    for chunk in _chunks(x, chunk_size):
        posterior = model.encode(chunk)
        eps = torch.randn(posterior.mu.shape, generator=generator, dtype=posterior.mu.dtype)
        nll = model.decode(posterior.rsample(eps)).nll(chunk)
        chunk_kl = posterior.kl_to_standard_normal()
        total += float((nll + chunk_kl).sum(dtype=torch.float64))
        kl += float(chunk_kl.sum(dtype=torch.float64))
        means.append(posterior.mu.double())
    active = (
        int((torch.cat(means).var(dim=0) > ACTIVE_UNIT_THRESHOLD).sum()) if x.shape[0] > 1 else 0
    )
    return {"neg_elbo": total / x.shape[0], "kl": kl / x.shape[0], "active_units": float(active)}


#: Burda et al. (2016, section 5.2): a latent unit is active when its posterior mean varies by more
#: than this.
ACTIVE_UNIT_THRESHOLD = 0.01


def negative_elbo(
    model: VAE, x: Tensor, chunk_size: int = 1000, generator: torch.Generator | None = None
) -> float:
    """Negative ELBO in nats per example, one reparameterised sample per example."""
    return elbo_terms(model, x, chunk_size, generator)["neg_elbo"]


def _iwae_chunk(
    model: VAE, x: Tensor, k: int, samples_per_pass: int, generator: torch.Generator | None
) -> Tensor:
    r""":math:`\mathcal L_k` of each example of ``x``, shape (n,)."""
    posterior = model.encode(x)  # mu, log_var: (n, d_z)
    log_weights = []
    for start in range(0, k, samples_per_pass):
        s = min(samples_per_pass, k - start)
        eps = torch.randn((s, *posterior.mu.shape), generator=generator, dtype=posterior.mu.dtype)
        z = posterior.rsample(eps)  # (s, n, d_z)
        target = x.unsqueeze(0).expand(s, *x.shape).reshape(s * x.shape[0], *x.shape[1:])
        log_px_z = -model.decode(z.reshape(s * x.shape[0], -1)).nll(target).reshape(s, x.shape[0])
        log_weights.append(log_importance_weights(log_px_z, z, posterior))
    return torch.logsumexp(torch.cat(log_weights).double(), dim=0) - math.log(k)


@torch.no_grad()
def iwae_log_likelihood(
    model: VAE,
    x: Tensor,
    k: int = 5000,
    chunk_size: int = 1000,
    generator: torch.Generator | None = None,
) -> float:
    r"""Mean over examples of the k-sample importance-weighted bound :math:`\mathcal L_k` (nats).

    Memory is bounded by ``chunk_size`` decoder evaluations per pass: examples are processed
    ``max(1, chunk_size // k)`` at a time, samples ``chunk_size`` at a time.

    Raises:
        ValueError: ``k`` < 1.
    """
    require(k >= 1, "iwae k (number of importance samples)", k, "an integer >= 1")
    examples_per_pass = max(1, chunk_size // k)
    samples_per_pass = max(1, chunk_size // examples_per_pass)
    total = 0.0
    for chunk in _chunks(x, examples_per_pass):
        total += float(_iwae_chunk(model, chunk, k, samples_per_pass, generator).sum())
    return total / x.shape[0]


def evaluate(
    model: nn.Module,
    train: Tensor,
    test: Tensor,
    chunk_size: int = 1000,
    iwae_samples: int = 0,
    iwae_examples: int | None = None,
    generator: torch.Generator | None = None,
    bound_samples: Sequence[int] = (),
) -> dict[str, float]:
    """All metrics of ``model`` on the full train and test sets, keyed ``"<split>.<metric>"``.

    Autoencoder: ``reconstruction_error`` and ``nll``. VAE: ``reconstruction_error`` and the
    :func:`elbo_terms` (``neg_elbo``, ``kl``, ``active_units``), plus, on the first
    ``iwae_examples`` test examples, ``test.iwae_ll`` (the log-likelihood estimate L_k,
    ``k = iwae_samples``) when ``iwae_samples`` > 0 and ``test.iwae_bound_k<k>`` for every ``k`` of
    ``bound_samples``. The model is put in eval mode and restored.
    """
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    for split, x in (("train", train), ("test", test)):
        metrics[f"{split}.reconstruction_error"] = reconstruction_error(model, x, chunk_size)
        if isinstance(model, VAE):
            metrics.update(
                {
                    f"{split}.{name}": value
                    for name, value in elbo_terms(model, x, chunk_size, generator).items()
                }
            )
        else:
            metrics[f"{split}.nll"] = negative_log_likelihood(model, x, chunk_size)
    if isinstance(model, VAE):
        subset = test if iwae_examples is None else test[:iwae_examples]
        if iwae_samples > 0:
            metrics["test.iwae_ll"] = iwae_log_likelihood(
                model, subset, iwae_samples, chunk_size, generator
            )
        for k in bound_samples:
            metrics[f"test.iwae_bound_k{k}"] = iwae_log_likelihood(
                model, subset, k, chunk_size, generator
            )
    model.train(was_training)
    return metrics
