"""The training runner: one run directory, a JSONL log, atomic checkpoints, exact resume.

A run directory holds

* ``config.json`` - the resolved :class:`~natgrad.experiments.config.RunConfig`;
* ``log.jsonl`` - one line per optimizer step (``{"kind": "step", "step", "time", "wall", "loss",
  "lr", "record"}``, ``record`` being whatever the optimizer exposes as ``last_step_record``) and
  one per evaluation (``{"kind": "eval", "step", "time", "wall", "metrics": {...}}``), ``time``
  being training seconds (evaluation and checkpointing excluded) and ``wall`` the elapsed seconds;
* ``checkpoint.pt`` - written atomically every ``checkpoint_every`` steps, at the end, and on
  SIGINT/SIGTERM: model and optimizer ``state_dict``, the data-order sampler, the VAE-noise
  generator, torch's global RNG, the step, the training time and the log length;
* ``result.json`` - written when the run ends (status ``completed``, ``diverged`` or
  ``interrupted``), with the final metrics.

Resuming (:func:`resume`) restores all of that, truncates the log to the checkpointed length, and
continues: the final parameters are bitwise those of an uninterrupted run with the same config on
the same machine, because every source of randomness is a generator saved in the checkpoint and
evaluation uses its own generator seeded from (seed, step).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from natgrad.experiments.batches import BatchSampler
from natgrad.experiments.checkpoint import CHECKPOINT_NAME, atomic_write_text, load_checkpoint, save_checkpoint
from natgrad.experiments.config import ConfigError, ModelConfig, RunConfig
from natgrad.experiments.data import RunData, load_run_data
from natgrad.experiments.metrics import HEADLINE_METRICS, evaluate
from natgrad.experiments.optimizers import build_optimizer
from natgrad.experiments.progress import make_progress
from natgrad.experiments.runlog import LOG_NAME, RunLog
from natgrad.losses import Loss, build_loss
from natgrad.models import ARCHITECTURES, VAE, DeepAutoencoder

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
RESULT_NAME = "result.json"


class RunExistsError(FileExistsError):
    """The output directory already holds a run (resume it, or choose another out_dir)."""


@dataclass
class RunResult:
    """How a run ended."""

    run_dir: Path
    status: str  # 'completed' | 'diverged' | 'interrupted'
    step: int
    train_time: float
    metrics: dict[str, float] = field(default_factory=dict)


def derive_seed(seed: int, purpose: str, *extra: int) -> int:
    """An independent 63-bit seed for one ``purpose`` (model init, data order, noise, evaluation)."""
    digest = hashlib.sha256(f"{seed}/{purpose}/{'/'.join(map(str, extra))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def build_model(config: ModelConfig, data: RunData, generator: torch.Generator) -> nn.Module:
    """The network of ``config`` for ``data`` (input size and likelihood come from the data).

    Without ``model.sizes`` or ``model.problem`` the architecture is that of ``data.problem``, the
    configured dataset, so a regenerated ``curves-regen`` cache still trains the CURVES network.

    Raises:
        ConfigError: no architecture is known for the dataset, or its input size does not match.
    """
    if config.sizes is not None:
        sizes = list(config.sizes)
    else:
        problem = config.problem or data.problem
        if problem not in ARCHITECTURES:
            raise ConfigError(f"model.problem and model.sizes are both unset and dataset {data.problem!r} has no paper "
                              f"architecture; set model.sizes or model.problem ({', '.join(sorted(ARCHITECTURES))})")
        sizes = list(ARCHITECTURES[problem])
    if sizes[0] != data.train.shape[1]:
        raise ConfigError(f"model input size {sizes[0]} != {data.train.shape[1]} pixels of dataset {data.name!r}; "
                          "fix model.sizes or model.problem")
    autoencoder = config.kind == "autoencoder"
    init = config.init or ("sparse" if autoencoder else "default")
    activation = config.activation or ("sigmoid" if autoencoder else "tanh")
    cls = DeepAutoencoder if autoencoder else VAE
    likelihood = config.likelihood or data.likelihood
    return cls(sizes, likelihood=likelihood, activation=activation, init=init, generator=generator)


@contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM in a list instead of dying, so the loop can checkpoint and stop."""
    received: list[int] = []
    handlers = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    except ValueError:  # not in the main thread: signals cannot be caught here
        logger.debug("signal handlers not installed (not the main thread)")
    try:
        yield received
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


class Trainer:
    """The state of one run and its loop; use :func:`train` and :func:`resume`."""

    def __init__(self, config: RunConfig, run_dir: Path, show_progress: bool = True) -> None:
        self.config = config
        self.run_dir = run_dir
        self.show_progress = show_progress
        torch.manual_seed(derive_seed(config.seed, "global"))
        self.data = load_run_data(config.data)
        self.model = build_model(config.model, self.data, torch.Generator().manual_seed(derive_seed(config.seed, "init")))
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.sampler = BatchSampler(self.data.train.shape[0], config.batch_size, derive_seed(config.seed, "data-order"),
                                    config.batch_schedule, config.batch_full_at)
        self.noise = torch.Generator().manual_seed(derive_seed(config.seed, "noise"))
        self.step = 0
        self.train_time = 0.0
        self.wall_offset = 0.0
        self.last_eval_step = -1
        self.last_eval_time = 0.0
        self.metrics: dict[str, float] = {}

    # -- state -------------------------------------------------------------------------------
    def state_dict(self, log_position: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "noise": self.noise.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "train_time": self.train_time,
            "wall": self.wall(),
            "last_eval_step": self.last_eval_step,
            "last_eval_time": self.last_eval_time,
            "metrics": self.metrics,
            "log_position": log_position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.noise.set_state(state["noise"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.train_time = float(state["train_time"])
        self.wall_offset = float(state["wall"])
        self.last_eval_step = int(state["last_eval_step"])
        self.last_eval_time = float(state.get("last_eval_time", 0.0))
        self.metrics = dict(state["metrics"])

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self._wall_start

    # -- one step and one evaluation ---------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        """One optimizer step on the next batch; returns its log record."""
        x = self.data.train[self.sampler.next_indices()]
        eps = None
        if isinstance(self.model, VAE):
            eps = torch.randn((x.shape[0], self.model.latent_dim), generator=self.noise, dtype=x.dtype)
        first: list[Loss] = []

        def closure() -> Loss:
            self.optimizer.zero_grad(set_to_none=True)
            loss = build_loss(self.model, x, eps=eps)
            loss.value.backward()
            if not first:
                first.append(loss)
            return loss

        self.optimizer.step(closure)
        self.step += 1
        group = self.optimizer.param_groups[0]
        record = getattr(self.optimizer, "last_step_record", None)
        return {
            "kind": "step",
            "step": self.step,
            "loss": float(first[0].value.detach()),
            # natural-gradient steps choose their own size: it is the record's alpha, not a group lr
            "lr": None if record is not None and "alpha" in record else group.get("lr"),
            "record": dict(record) if record is not None else None,
        }

    def evaluate(self, final: bool) -> dict[str, float]:
        """Metrics on the full train and test sets; the IWAE bound only when ``final`` unless asked."""
        ev = self.config.eval
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, "eval", self.step))
        iwae = ev.iwae_samples if final or ev.iwae_every_eval else 0
        self.metrics = evaluate(self.model, self.data.train, self.data.test, ev.chunk_size, iwae,
                                ev.iwae_examples, generator)
        self.last_eval_step = self.step
        self.last_eval_time = self.train_time
        return self.metrics

    def evaluation_due(self) -> bool:
        """Every ``eval.every`` steps, or when the training time crossed a multiple of ``eval.every_seconds``."""
        ev = self.config.eval
        if self.step % ev.every == 0:
            return True
        return ev.every_seconds is not None and (self.train_time // ev.every_seconds
                                                 > self.last_eval_time // ev.every_seconds)

    # -- the loop ------------------------------------------------------------------------------
    def budget_left(self) -> bool:
        budget = self.config.budget
        if budget.steps is not None and self.step >= budget.steps:
            return False
        return budget.seconds is None or self.train_time < budget.seconds

    def run(self, log: RunLog) -> RunResult:
        threads = torch.get_num_threads()
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        try:
            return self._run(log)
        finally:
            torch.set_num_threads(threads)

    def _run(self, log: RunLog) -> RunResult:
        self._wall_start = time.perf_counter()
        metric_key = f"train.{HEADLINE_METRICS[self.config.model.kind]}"
        progress = make_progress(self.config.budget.steps, self.step, f"{self.config.optimizer.name}",
                                 metric_key) if self.show_progress else None
        status = "completed"
        with _stop_on_signals() as received:
            if self.last_eval_step < 0:
                self._log_eval(log, progress, final=False)
            while self.budget_left():
                if received:
                    status = "interrupted"
                    break
                start = time.perf_counter()
                record = self.train_step()
                self.train_time += time.perf_counter() - start
                log.write({**record, "time": self.train_time, "wall": self.wall()})
                if progress is not None:
                    progress.step(self.step, record["loss"])
                if not math.isfinite(record["loss"]):
                    status = "diverged"
                    break
                if self.evaluation_due():
                    self._log_eval(log, progress, final=not self.budget_left())
                if self.step % self.config.checkpoint_every == 0:
                    save_checkpoint(self.run_dir, self.state_dict(log.position()))
            if status != "interrupted" and self.last_eval_step != self.step:
                self._log_eval(log, progress, final=True)
            save_checkpoint(self.run_dir, self.state_dict(log.position()))
        if progress is not None:
            progress.close()
        result = RunResult(self.run_dir, status, self.step, self.train_time, dict(self.metrics))
        _write_result(result)
        return result

    def _log_eval(self, log: RunLog, progress, final: bool) -> None:
        start = time.perf_counter()
        metrics = self.evaluate(final)
        log.write({"kind": "eval", "step": self.step, "time": self.train_time, "wall": self.wall(), "metrics": metrics})
        if progress is not None:
            elapsed = self.train_time
            progress.evaluated(self.step, metrics, self.step / elapsed if elapsed > 0 else 0.0)
        logger.debug("evaluation at step %d took %.2fs", self.step, time.perf_counter() - start)


def _write_result(result: RunResult) -> None:
    payload = {"status": result.status, "step": result.step, "train_time": result.train_time, "metrics": result.metrics}
    atomic_write_text(result.run_dir / RESULT_NAME, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def train(config: RunConfig, show_progress: bool = True) -> RunResult:
    """Start a new run in ``config.out_dir`` and train it to its budget (or until SIGINT/SIGTERM).

    Raises:
        RunExistsError: ``out_dir`` already holds a run.
    """
    run_dir = Path(config.out_dir)
    if (run_dir / CONFIG_NAME).exists() or (run_dir / CHECKPOINT_NAME).exists():
        raise RunExistsError(f"{run_dir} already holds a run; resume it with --resume {run_dir} or choose another out_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, run_dir, show_progress)
    atomic_write_text(run_dir / CONFIG_NAME, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    (run_dir / LOG_NAME).write_text("")
    (run_dir / RESULT_NAME).unlink(missing_ok=True)
    log = RunLog(run_dir / LOG_NAME)
    try:
        return trainer.run(log)
    finally:
        log.close()


def load_run_dir_config(run_dir: str | Path) -> RunConfig:
    """The resolved config saved in a run directory."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {run_dir}; is it a natgrad run directory?")
    return RunConfig.from_dict(json.loads(path.read_text()))


def resume(run_dir: str | Path, show_progress: bool = True) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint, exactly as if never interrupted.

    A run that already completed is not rerun; its result is returned.

    Raises:
        FileNotFoundError: ``run_dir`` has no config or no checkpoint.
    """
    run_dir = Path(run_dir)
    config = load_run_dir_config(run_dir)
    result_path = run_dir / RESULT_NAME
    if result_path.is_file():
        saved = json.loads(result_path.read_text())
        if saved["status"] in ("completed", "diverged"):
            return RunResult(run_dir, saved["status"], saved["step"], saved["train_time"], saved["metrics"])
    state = load_checkpoint(run_dir)
    trainer = Trainer(config, run_dir, show_progress)
    trainer.load_state_dict(state)
    result_path.unlink(missing_ok=True)
    log = RunLog(run_dir / LOG_NAME, truncate_to=int(state["log_position"]))
    try:
        return trainer.run(log)
    finally:
        log.close()
