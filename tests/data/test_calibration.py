"""The PCA reconstruction error used to calibrate the regenerated datasets."""

from __future__ import annotations

import numpy as np
import pytest

from natgrad.data.calibration import pca_test_error


def test_limits_and_a_known_subspace():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(10, 3)))[0]  # data in a 3-D subspace plus a known offset
    train = rng.normal(size=(500, 3)) @ basis.T + 2.0
    test = rng.normal(size=(50, 3)) @ basis.T + 2.0
    assert pca_test_error(train, test, 3) == pytest.approx(0.0, abs=1e-20)
    assert pca_test_error(train, test, 10) == pytest.approx(0.0, abs=1e-20)
    # zero components: squared distance to the training mean
    expected = ((test - train.mean(axis=0)) ** 2).sum(axis=1).mean()
    assert pca_test_error(train, test, 0) == pytest.approx(expected, rel=1e-12)


def test_residual_of_k_components_matches_svd():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(300, 8)) * np.arange(1, 9)
    test = rng.normal(size=(40, 8)) * np.arange(1, 9)
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    v = vt[:5].T
    residual = (test - mean) - (test - mean) @ v @ v.T
    assert pca_test_error(train, test, 5, chunk=7) == pytest.approx(
        (residual**2).sum(axis=1).mean(), rel=1e-10
    )


def test_bad_component_count():
    with pytest.raises(ValueError, match=r"Invalid components: 9; allowed: an integer in \[0, 8\]"):
        pca_test_error(np.zeros((3, 8)), np.zeros((2, 8)), 9)
