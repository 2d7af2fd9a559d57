"""Caches: atomic writes, checksummed manifests, and prepare/load of regenerated datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from natgrad.data import DataError, datasets, load_dataset, prepare_dataset
from natgrad.data import cache as cache_module
from natgrad.data.cache import read_cache, write_cache
from natgrad.data.curves import CurvesRecipe, generate_curves
from natgrad.data.faces import FacesRecipe

TINY_CURVES = CurvesRecipe(n_train=40, n_test=20)


def test_round_trip(tmp_path):
    arrays = {
        "train": np.arange(12, dtype=np.float32).reshape(3, 4),
        "test": np.ones((2, 4), np.float32),
    }
    write_cache(tmp_path, arrays, {"seed": 7})
    loaded, manifest = read_cache(tmp_path)
    assert manifest["seed"] == 7 and manifest["arrays"]["train"]["shape"] == [3, 4]
    assert all(np.array_equal(loaded[key], arrays[key]) for key in arrays)


def test_changed_array_is_rejected_with_both_sums(tmp_path):
    write_cache(tmp_path, {"train": np.zeros((4, 4), np.float32)}, {})
    recorded = json.loads((tmp_path / "manifest.json").read_text())["arrays"]["train"]["sha256"]
    np.save(tmp_path / "train.npy", np.ones((4, 4), np.float32))
    with pytest.raises(DataError, match="train.npy: sha256 is [0-9a-f]{64}, manifest") as info:
        read_cache(tmp_path)
    assert recorded in str(info.value)


def test_missing_manifest_is_rejected(tmp_path):
    np.save(tmp_path / "train.npy", np.zeros(3))
    with pytest.raises(DataError, match="missing manifest"):
        read_cache(tmp_path)


def test_failed_write_leaves_no_partial_file_and_no_manifest(tmp_path, monkeypatch):
    write_cache(tmp_path, {"train": np.zeros(3)}, {"seed": 0})
    calls = {"n": 0}
    real_fsync = cache_module.os.fsync

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:  # the second array of the rebuild
            raise OSError("disk full")
        real_fsync(fd)

    monkeypatch.setattr(cache_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_cache(tmp_path, {"train": np.ones(3), "test": np.ones(2)}, {"seed": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npy"]  # no temp file, no manifest
    with pytest.raises(DataError, match="missing manifest"):
        read_cache(tmp_path)


def test_load_without_cache_says_how_to_prepare(isolated):
    with pytest.raises(DataError, match="Run `natgrad data prepare curves`") as info:
        load_dataset("curves")
    assert str(isolated["cache"]) in str(info.value)


def test_prepare_then_load_curves(isolated, tmp_path):
    path = prepare_dataset("curves", tmp_path / "cli", recipe=TINY_CURVES, progress=False)
    assert path == tmp_path / "cli" / "curves-regen"
    manifest = json.loads((path / "manifest.json").read_text())
    assert (
        manifest["recipe"]["n_train"] == 40
        and manifest["seed"] == 0
        and manifest["natgrad_version"]
    )
    data = load_dataset("curves", tmp_path / "cli")
    expected_train, expected_test = generate_curves(TINY_CURVES, seed=0)
    assert (
        data.name == "curves-regen"
        and data.likelihood == "bernoulli"
        and data.image_shape == (28, 28)
    )
    assert torch.equal(data.train, torch.from_numpy(expected_train))
    assert torch.equal(data.test, torch.from_numpy(expected_test))
    assert data.source == str(path / "manifest.json")


def test_prepare_writes_to_user_cache_not_shared(isolated):
    path = prepare_dataset("curves", recipe=TINY_CURVES, progress=False)
    assert path == isolated["cache"] / "curves-regen"
    assert list(isolated["shared"].iterdir()) == []


def test_prepare_keeps_a_current_cache_and_rebuilds_a_bad_one(isolated, tmp_path):
    path = prepare_dataset("curves", tmp_path, recipe=TINY_CURVES, progress=False)
    stamp = (path / "train.npy").stat().st_mtime_ns
    prepare_dataset("curves", tmp_path, recipe=TINY_CURVES, progress=False)
    assert (path / "train.npy").stat().st_mtime_ns == stamp
    np.save(path / "test.npy", np.zeros((20, 784), np.float32))  # corrupt it
    with pytest.raises(DataError, match="test.npy: sha256 is"):
        load_dataset("curves", tmp_path)
    prepare_dataset("curves", tmp_path, recipe=TINY_CURVES, progress=False)
    assert load_dataset("curves", tmp_path).test.shape == (20, 784)


def test_prepare_with_another_seed_rebuilds(isolated, tmp_path):
    prepare_dataset("curves", tmp_path, recipe=TINY_CURVES, progress=False)
    first = load_dataset("curves", tmp_path).train
    prepare_dataset("curves", tmp_path, recipe=TINY_CURVES, seed=1, progress=False)
    assert not torch.equal(first, load_dataset("curves", tmp_path).train)


def test_prepare_faces_from_olivetti(shared_data_dir, isolated, tmp_path, monkeypatch):
    monkeypatch.setattr("natgrad.data.paths.shared_data_dir", lambda: shared_data_dir)
    path = prepare_dataset("faces", tmp_path, recipe=FacesRecipe(variants=1), progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["source"] == str(shared_data_dir / "olivettifaces.mat")
    assert (
        manifest["source_sha256"]
        == "b1988d02c72fe5b8ee82b5ef3bb7982eafc74f1e1ff0ae0ade35061ad0af534d"
    )
    assert manifest["recipe"]["rotation_deg"] == [-90.0, 90.0]
    data = load_dataset("faces", tmp_path)
    assert (
        data.name == "faces-regen"
        and data.likelihood == "gaussian"
        and data.image_shape == (25, 25)
    )
    assert data.train.shape == (250, 625) and data.test.shape == (100, 625)


def test_wrong_recipe_type_rejected(isolated, tmp_path):
    with pytest.raises(DataError, match="recipe for faces must be a FacesRecipe, got CurvesRecipe"):
        prepare_dataset("faces", tmp_path, recipe=TINY_CURVES)


def test_new_generator_version_rebuilds(isolated, tmp_path, monkeypatch):
    path = prepare_dataset("curves", tmp_path, recipe=TINY_CURVES, progress=False)
    assert json.loads((path / "manifest.json").read_text())["generator_version"] == 1
    monkeypatch.setitem(datasets._GENERATOR_VERSION, "curves", 99)
    prepare_dataset("curves", tmp_path, recipe=TINY_CURVES, progress=False)
    assert json.loads((path / "manifest.json").read_text())["generator_version"] == 99
