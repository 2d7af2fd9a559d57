"""The data of a run: a benchmark dataset from :mod:`natgrad.data` (optionally subset), or
synthetic.

The ``"synthetic"`` dataset exists for tests and smoke runs that must not depend on files: binary
8x8 images ``x ~ Bernoulli(sigmoid(W h))`` from a 4-dimensional latent ``h ~ N(0, I)``, with ``W``
fixed by a constant seed, 2,000 training and 500 test images. It is not a benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from natgrad.experiments.config import DataConfig

SYNTHETIC_SEED = 1234
SYNTHETIC_SHAPE = (8, 8)
SYNTHETIC_SIZES = (2000, 500)
SYNTHETIC_LATENT = 4


@dataclass(frozen=True)
class RunData:
    """Flattened float32 train and test examples, ``(N, D)``, and how to model them.

    ``problem`` is the configured dataset (``data.dataset``: 'mnist', 'curves', 'faces' or
    'synthetic') and selects the paper architecture; ``name`` is what was loaded, e.g.
    ``curves-regen`` for a regenerated CURVES cache, and is for messages and provenance only.
    """

    problem: str
    name: str
    train: Tensor
    test: Tensor
    image_shape: tuple[int, ...]
    likelihood: str  # 'bernoulli' | 'gaussian'
    source: str


def synthetic_data() -> RunData:
    """The seeded synthetic binary images (see module docstring)."""
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED)
    dim = SYNTHETIC_SHAPE[0] * SYNTHETIC_SHAPE[1]
    weights = 3.0 * torch.randn(SYNTHETIC_LATENT, dim, generator=generator)
    n = sum(SYNTHETIC_SIZES)
    probs = torch.sigmoid(torch.randn(n, SYNTHETIC_LATENT, generator=generator) @ weights)
    x = torch.bernoulli(probs, generator=generator)
    train, test = x[: SYNTHETIC_SIZES[0]], x[SYNTHETIC_SIZES[0] :]
    return RunData(
        "synthetic",
        "synthetic",
        train,
        test,
        SYNTHETIC_SHAPE,
        "bernoulli",
        f"generated (seed {SYNTHETIC_SEED})",
    )


@lru_cache(maxsize=2)
def _benchmark(name: str, data_dir: str | None) -> RunData:
    """A benchmark dataset, read and checked once per process (a comparison runs many configs on
    it).
    """
    from natgrad.data import load_dataset

    ds = load_dataset(name, data_dir)
    return RunData(
        name,
        ds.name,
        torch.as_tensor(ds.train),
        torch.as_tensor(ds.test),
        tuple(ds.image_shape),
        ds.likelihood,
        str(ds.source),
    )


def _subset(examples: Tensor, size: int | None, how: str) -> Tensor:
    """``size`` of ``examples``: the first ones ('prefix') or evenly spaced ones ('strided': rows
    ``floor(i * M / size)``, i = 0..size-1, of the M examples).
    """
    if size is None:
        return examples
    if how == "prefix":
        return examples[:size]
    return examples[torch.arange(size) * examples.shape[0] // size]


def load_run_data(config: DataConfig) -> RunData:
    """The train/test data of ``config``, subset to ``train_size`` / ``test_size`` examples as
    ``config.subset`` says.

    Raises:
        natgrad.data.DataError: the dataset files are missing or corrupt.
        ValueError: a requested subset is larger than the dataset.
    """
    data = (
        synthetic_data()
        if config.dataset == "synthetic"
        else _benchmark(config.dataset, config.data_dir)
    )
    train, test = data.train, data.test
    for field_name, size, full in (
        ("data.train_size", config.train_size, train),
        ("data.test_size", config.test_size, test),
    ):
        if size is not None and size > full.shape[0]:
            raise ValueError(
                f"{field_name} = {size} exceeds the {full.shape[0]} examples of {data.name!r}"
            )
    train, test = (
        _subset(train, config.train_size, config.subset),
        _subset(test, config.test_size, config.subset),
    )
    return RunData(
        data.problem,
        data.name,
        train.float().reshape(train.shape[0], -1).contiguous(),
        test.float().reshape(test.shape[0], -1).contiguous(),
        data.image_shape,
        data.likelihood,
        data.source,
    )
