"""The calibration check of the regenerated datasets: PCA reconstruction error on the test set.

Hinton & Salakhutdinov (2006, Fig. 2) report, per test image, the squared reconstruction error
summed over pixels of PCA fitted on the training set: CURVES 5.90 (18 components), MNIST 13.87
(30), FACES 135 (30). With training mean m and the top-k eigenvectors V_k of the training
covariance, the error of a test image x is ||(I - V_k V_k^T)(x - m)||^2.
"""

from __future__ import annotations

import numpy as np

from natgrad.validation import require

PAPER_PCA_ERROR = {"mnist": (30, 13.87), "curves": (18, 5.90), "faces": (30, 135.0)}


def pca_test_error(
    train: np.ndarray, test: np.ndarray, components: int, *, chunk: int = 20000
) -> float:
    """Mean over test rows of the squared error summed over columns, PCA(k) fitted on ``train``.

    Accumulates the covariance in float64 chunks so 100k x 625 inputs fit comfortably in memory.
    """
    train, test = np.asarray(train), np.asarray(test)
    dim = train.shape[1]
    require(0 <= components <= dim, "components", components, f"an integer in [0, {dim}]")
    mean = train.mean(axis=0, dtype=np.float64)
    scatter = np.zeros((dim, dim))
    for start in range(0, len(train), chunk):
        centred = train[start : start + chunk].astype(np.float64) - mean
        scatter += centred.T @ centred
    _, vectors = np.linalg.eigh(scatter)  # ascending eigenvalues
    basis = vectors[:, dim - components :]  # (D, k)
    total = 0.0
    for start in range(0, len(test), chunk):
        centred = test[start : start + chunk].astype(np.float64) - mean
        residual = centred - (centred @ basis) @ basis.T
        total += float(np.einsum("ij,ij->", residual, residual))
    return total / len(test)
