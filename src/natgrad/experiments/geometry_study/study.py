r"""The perturbation-norm study: how the local metrics of divergences compare on trained models.

For a small MNIST autoencoder and VAE (trained briefly with Adam, then evaluated in float64 on a
fixed probe batch and fixed VAE noise), with ``G_M`` each divergence's pulled-back metric
(:class:`~natgrad.geometry.pullback.PulledBackMetric`) and ``F = G_KL`` the Fisher:

1. Directions ``u`` (unit Euclidean norm): random Gaussian, the loss gradient, the natural gradient
   ``(F + lambda I)^{-1} g`` (CG) and the top eigenvectors of ``F`` (Lanczos).
2. Quadratic validity: along ``theta + t u`` with ``t = l / sqrt(u^T F u)`` (``l`` the *Fisher
   length*, so ``KL ~ l^2 / 2``), the ratio ``D(t) / (1/2 t^2 u^T G_M u)`` for every divergence.
3. Agreement: ``u^T G_M u / u^T F u`` across directions (constant iff ``G_M`` is a multiple of
   ``F`` on them) and Spearman rank correlations of the norms, and of the true divergences at ``l =
   1``.
4. Steepest descent: ``d_M = (G_M + lambda_M I)^{-1} g`` and its cosine to ``d_F``.
5. Training the VAE with each metric's direction
   (:mod:`natgrad.experiments.geometry_study.metric_training`).

``run_study`` returns the results and writes ``results.json``, the plots and ``report.md``
(:mod:`natgrad.experiments.geometry_study.report`) into ``out_dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from natgrad.data import load_dataset
from natgrad.experiments.geometry_study.directions import (
    mean_eigenvalue,
    steepest_descent_direction,
    top_eigenvectors,
    unit,
)
from natgrad.experiments.geometry_study.metric_training import (
    MetricTrainingConfig,
    train_with_metric,
)
from natgrad.geometry.divergences import Divergence, NoLocalMetricError, get_divergence
from natgrad.geometry.pullback import PulledBackMetric, flat_parameters, model_outputs, unflatten
from natgrad.losses import build_loss
from natgrad.models import VAE, DeepAutoencoder
from natgrad.validation import require

logger = logging.getLogger(__name__)

#: Divergences of the study with their settings: (label, name, settings).
STUDY_DIVERGENCES: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("KL", "kl", {}),
    ("reverse KL", "reverse_kl", {}),
    ("Jeffreys", "jeffreys", {}),
    ("Hellinger^2", "hellinger", {}),
    ("JS", "js", {}),
    ("alpha=0.5", "alpha", {"alpha": 0.5}),
    ("chi^2", "chi2", {}),
    ("MMD^2 (h=1)", "mmd", {"bandwidth": 1.0}),
    ("W2^2", "w2", {}),
    ("TV", "tv", {}),
)
#: Metrics the VAE is trained with (f-divergences all give the Fisher direction; see docs).
TRAINING_METRICS: tuple[tuple[str, str | None], ...] = (
    ("Fisher (KL)", "kl"),
    ("Hellinger^2", "hellinger"),
    ("MMD^2 (h=1)", "mmd"),
    ("Euclidean", None),
)


@dataclass(frozen=True)
class StudyConfig:
    """Settings of :func:`run_study`; the defaults take a few CPU minutes."""

    out_dir: Path
    data_dir: str | None = None
    train_size: int = 3000
    test_size: int = 1000
    hidden: int = 64
    code: int = 16
    latent: int = 8
    pretrain_steps: int = 400
    pretrain_batch: int = 100
    pretrain_lr: float = 1e-3
    probe_batch: int = 200
    random_directions: int = 16
    eigen_directions: int = 3
    cg_iterations: int = 100
    relative_damping: float = 1e-3
    fisher_lengths: tuple[float, ...] = tuple(float(v) for v in np.logspace(-2.5, 1.5, 17))
    training: MetricTrainingConfig = field(default_factory=MetricTrainingConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "train_size",
            "test_size",
            "hidden",
            "code",
            "latent",
            "pretrain_steps",
            "pretrain_batch",
            "probe_batch",
            "random_directions",
            "eigen_directions",
            "cg_iterations",
        ):
            value = getattr(self, name)
            require(value >= 1, f"StudyConfig.{name}", value, "an integer >= 1")
        for name in ("relative_damping", "pretrain_lr"):
            value = getattr(self, name)
            require(value > 0, f"StudyConfig.{name}", value, "a number > 0")

    @classmethod
    def quick(cls, out_dir: Path, data_dir: str | None = None) -> "StudyConfig":
        """A seconds-long configuration for smoke tests (numbers not meaningful)."""
        return cls(
            out_dir=Path(out_dir),
            data_dir=data_dir,
            train_size=200,
            test_size=100,
            hidden=8,
            code=4,
            latent=2,
            pretrain_steps=5,
            probe_batch=20,
            random_directions=3,
            eigen_directions=1,
            cg_iterations=5,
            fisher_lengths=(0.01, 0.1, 1.0),
            training=MetricTrainingConfig(steps=2, batch_size=20, cg_iterations=3, eval_every=1),
        )


def _pretrain(
    model: nn.Module, train: Tensor, config: StudyConfig, generator: torch.Generator
) -> list[float]:
    """Adam on the negative ELBO / NLL; returns the loss every 50 steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.pretrain_lr)
    history = []
    for step in range(config.pretrain_steps):
        x = train[torch.randint(0, train.shape[0], (config.pretrain_batch,), generator=generator)]
        loss = (
            build_loss(model, x, generator=generator)
            if isinstance(model, VAE)
            else build_loss(model, x)
        )
        optimizer.zero_grad()
        loss.value.backward()
        optimizer.step()
        if step % 50 == 0 or step == config.pretrain_steps - 1:
            history.append(float(loss.value.detach()))
    return history


def _gradient(model: nn.Module, x: Tensor, eps: Tensor | None, theta: Tensor) -> Tensor:
    loss = build_loss(model, x, eps=eps) if eps is not None else build_loss(model, x)
    params = unflatten(model, theta.clone().requires_grad_(True))
    grads = torch.autograd.grad(loss.value_at(params), list(params.values()))
    return torch.cat([g.reshape(-1) for g in grads])


def _metrics(
    outputs, theta: Tensor, divergences: dict[str, Divergence]
) -> tuple[dict[str, PulledBackMetric], dict[str, str]]:
    """The pulled-back metric of every divergence that has one, and why the others have none."""
    metrics, missing = {}, {}
    for label, divergence in divergences.items():
        try:
            metrics[label] = PulledBackMetric(outputs, theta, divergence)
        except NoLocalMetricError as error:
            missing[label] = str(error)
    return metrics, missing


def _directions(
    metrics: dict[str, PulledBackMetric],
    gradient: Tensor,
    config: StudyConfig,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    fisher = metrics["KL"]
    damping = config.relative_damping * mean_eigenvalue(
        fisher.quadratic_form, fisher.dim, 8, generator, gradient.dtype
    )
    natural = steepest_descent_direction(
        fisher.matvec, gradient, damping, config.cg_iterations
    ).solution
    directions = {"gradient": unit(gradient), "natural gradient": unit(natural)}
    _, eigenvectors = top_eigenvectors(
        fisher.matvec, fisher.dim, config.eigen_directions, gradient.dtype, config.seed
    )
    for i, v in enumerate(eigenvectors):
        directions[f"F eigvec {i + 1}"] = unit(v)
    for i in range(config.random_directions):
        directions[f"random {i + 1}"] = unit(
            torch.randn(fisher.dim, generator=generator, dtype=gradient.dtype)
        )
    return directions


def _spearman(a: list[float], b: list[float]) -> float:
    return float(spearmanr(a, b).statistic)


def _probe_model(
    name: str, model: nn.Module, data: Tensor, config: StudyConfig, generator: torch.Generator
) -> dict[str, Any]:
    """Steps 1-4 of the study for one trained model (float64)."""
    model = model.double()
    x = data[: config.probe_batch].double()
    eps = (
        torch.randn(x.shape[0], model.latent_dim, generator=generator, dtype=x.dtype)
        if isinstance(model, VAE)
        else None
    )
    outputs, theta = model_outputs(model, x, eps), flat_parameters(model)
    divergences = {label: get_divergence(n, **s) for label, n, s in STUDY_DIVERGENCES}
    metrics, missing = _metrics(outputs, theta, divergences)
    gradient = _gradient(model, x, eps, theta)
    directions = _directions(metrics, gradient, config, generator)
    fisher_norms = {d: float(metrics["KL"].quadratic_form(u)) for d, u in directions.items()}
    norms = {
        m: {d: float(metric.quadratic_form(u)) for d, u in directions.items()}
        for m, metric in metrics.items()
    }
    curves: dict[str, dict[str, list[float]]] = {
        label: {d: [] for d in directions} for label in divergences
    }
    with torch.no_grad():
        reference = outputs(theta)
        for d, u in directions.items():
            for length in config.fisher_lengths:
                perturbed = outputs(theta + (length / math.sqrt(fisher_norms[d])) * u)
                for label, divergence in divergences.items():
                    total = sum(divergence.between(p, q) for p, q in zip(reference, perturbed))
                    curves[label][d].append(float(total.mean()))
    unit_index = int(np.argmin(np.abs(np.log(np.asarray(config.fisher_lengths)))))
    names = list(directions)
    steepest = {}
    for label, metric in metrics.items():
        scale = mean_eigenvalue(metric.quadratic_form, metric.dim, 8, generator, theta.dtype)
        result = steepest_descent_direction(
            metric.matvec, gradient, config.relative_damping * scale, config.cg_iterations
        )
        steepest[label] = result.solution
    cosines = {
        label: float(torch.nn.functional.cosine_similarity(v, steepest["KL"], dim=0))
        for label, v in steepest.items()
    }
    cosines["Euclidean (gradient)"] = float(
        torch.nn.functional.cosine_similarity(gradient, steepest["KL"], dim=0)
    )
    return {
        "model": name,
        "parameters": theta.numel(),
        "no_metric": missing,
        "directions": names,
        "fisher_norms": fisher_norms,
        "norms": norms,
        "ratio_to_fisher": {m: {d: norms[m][d] / fisher_norms[d] for d in names} for m in norms},
        "spearman_norms": {
            a: {
                b: _spearman([norms[a][d] for d in names], [norms[b][d] for d in names])
                for b in norms
            }
            for a in norms
        },
        "unit_length": config.fisher_lengths[unit_index],
        "spearman_divergences": {
            a: {
                b: _spearman(
                    [curves[a][d][unit_index] for d in names],
                    [curves[b][d][unit_index] for d in names],
                )
                for b in divergences
            }
            for a in divergences
        },
        "divergence_curves": curves,
        "steepest_cosine_to_natural_gradient": cosines,
    }


def run_study(config: StudyConfig) -> dict[str, Any]:
    """Run the whole study, write ``results.json``, the plots and ``report.md`` into
    ``config.out_dir``.
    """
    from natgrad.experiments.geometry_study.report import write_report

    start = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    dataset = load_dataset("mnist", config.data_dir, split_train_size=config.train_size)
    train, test = dataset.train, dataset.test[: config.test_size]
    sizes_ae, sizes_vae = (784, config.hidden, config.code), (784, config.hidden, config.latent)
    models = {
        "autoencoder": DeepAutoencoder(sizes_ae, init="default"),
        "vae": VAE(sizes_vae, init="default"),
    }
    results: dict[str, Any] = {
        "config": _jsonable(asdict(config)),
        "dataset": dataset.source,
        "pretrain": {},
        "probes": {},
    }
    for name, model in models.items():
        results["pretrain"][name] = _pretrain(model, train, config, generator)
        logger.info("pretrained %s: loss %.2f", name, results["pretrain"][name][-1])
        results["probes"][name] = _probe_model(name, model, test, config, generator)
    results["training"] = _train_vaes(train.double(), test.double(), config)
    results["seconds"] = time.perf_counter() - start
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, out)
    return results


def _train_vaes(train: Tensor, test: Tensor, config: StudyConfig) -> list[dict[str, Any]]:
    """Train one fresh small VAE per metric from the same initialisation."""
    torch.manual_seed(config.seed + 1)
    initial = VAE((784, config.hidden, config.latent), init="default").double()
    curves = []
    for label, name in TRAINING_METRICS:
        model = VAE((784, config.hidden, config.latent), init="default").double()
        model.load_state_dict(initial.state_dict())
        divergence = None if name is None else get_divergence(name)
        t0 = time.perf_counter()
        curve = train_with_metric(model, train, test, divergence, config.training, label)
        logger.info(
            "trained VAE with %s: test loss %.2f (%.0fs)",
            label,
            curve.test_loss[-1],
            time.perf_counter() - t0,
        )
        curves.append({**asdict(curve), "seconds": time.perf_counter() - t0})
    return curves


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``natgrad geometry``."""
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for report.md, results.json and plots"
    )
    parser.add_argument("--data-dir", help="directory holding mnist/ (searched first)")
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke run (numbers not meaningful)"
    )
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    """``natgrad geometry --out DIR``: run the study and write its report; returns the exit
    status.
    """
    torch.set_num_threads(1)
    config = (
        StudyConfig.quick(args.out, args.data_dir)
        if args.quick
        else StudyConfig(out_dir=args.out, data_dir=args.data_dir)
    )
    results = run_study(replace(config, seed=args.seed))
    logger.info("geometry study written to %s (%.0fs)", args.out, results["seconds"])
    return 0
