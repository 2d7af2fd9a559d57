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
    with pytest.raises(
        ValueError, match="data.train_size = 5000 exceeds the 2000 examples of 'synthetic'"
    ):
        load_run_data(DataConfig(dataset="synthetic", train_size=5000))


def test_strided_subset_spreads_over_the_file_and_prefix_is_the_default():
    full = load_run_data(DataConfig(dataset="synthetic"))
    strided = load_run_data(
        DataConfig(dataset="synthetic", train_size=300, test_size=50, subset="strided")
    )
    # rows floor(i * 2000 / 300): 0, 6, 13, 20, ..., 1993 -- the last one near the end of the file
    rows = [i * 2000 // 300 for i in range(300)]
    assert rows[-1] == 1993 and torch.equal(strided.train, full.train[rows])
    assert torch.equal(strided.test, full.test[[i * 500 // 50 for i in range(50)]])
    assert DataConfig().subset == "prefix"
    with pytest.raises(
        ValueError, match=r"Invalid data\.subset: 'random'; allowed: prefix, strided"
    ):
        DataConfig(subset="random")


def test_mnist_subset(shared_data_dir):
    data = load_run_data(
        DataConfig(dataset="mnist", data_dir=str(shared_data_dir), train_size=100, test_size=10)
    )
    assert data.train.shape == (100, 784) and data.test.shape == (10, 784)
    assert (
        data.train.dtype == torch.float32
        and 0.0 <= float(data.train.min()) < float(data.train.max()) <= 1.0
    )
    assert (data.likelihood, data.image_shape) == ("bernoulli", (28, 28))


def test_regenerated_curves_train_the_curves_architecture(tmp_path, monkeypatch):
    """A regenerated cache loads as 'curves-regen' but is still the CURVES problem (paper
    network).
    """
    from natgrad.data import paths, prepare_dataset
    from natgrad.data.curves import CurvesRecipe
    from natgrad.experiments.config import ModelConfig
    from natgrad.experiments.runner import build_model

    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(paths, "shared_data_dir", lambda: tmp_path / "no-shared")
    prepare_dataset(
        "curves", tmp_path / "data", recipe=CurvesRecipe(n_train=40, n_test=20), progress=False
    )
    data = load_run_data(DataConfig(dataset="curves", data_dir=str(tmp_path / "data")))
    assert (data.name, data.problem, data.train.shape) == ("curves-regen", "curves", (40, 784))
    model = build_model(ModelConfig(kind="autoencoder"), data, torch.Generator().manual_seed(0))
    assert model.sizes == (784, 400, 200, 100, 50, 25, 6)
