"""Run data: real MNIST subsets and the seeded synthetic set."""
from __future__ import annotations

import pytest
import torch

from natgrad.experiments.config import DataConfig
from natgrad.experiments.data import load_run_data


def test_synthetic_is_deterministic_and_subsettable():
    a = load_run_data(DataConfig(dataset="synthetic", train_size=300, test_size=50))
    b = load_run_data(DataConfig(dataset="synthetic"))
    assert a.train.shape == (300, 64) and a.test.shape == (50, 64) and b.train.shape == (2000, 64)
    assert torch.equal(a.train, b.train[:300]) and set(a.train.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="data.train_size = 5000 exceeds the 2000 examples of 'synthetic'"):
        load_run_data(DataConfig(dataset="synthetic", train_size=5000))


def test_mnist_subset(shared_data_dir):
    data = load_run_data(DataConfig(dataset="mnist", data_dir=str(shared_data_dir), train_size=100, test_size=10))
    assert data.train.shape == (100, 784) and data.test.shape == (10, 784)
    assert data.train.dtype == torch.float32 and 0.0 <= float(data.train.min()) < float(data.train.max()) <= 1.0
    assert (data.likelihood, data.image_shape) == ("bernoulli", (28, 28))
