"""Readers of the original .mat files (tiny synthetic ones) and of the face sources."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from natgrad.data import DataError, load_dataset
from natgrad.data.sources import (
    read_att_faces,
    read_curves_mat,
    read_faces_mat,
    read_olivetti_mat,
    read_pgm,
)


def test_curves_mat(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.random((6, 784)), rng.random((3, 784))
    scipy.io.savemat(tmp_path / "digs3pts_1.mat", {"bdata": train, "bdatatest": test})
    got_train, got_test = read_curves_mat(tmp_path / "digs3pts_1.mat")
    np.testing.assert_allclose(got_train, train.astype(np.float32))
    assert got_test.shape == (3, 784) and got_train.dtype == np.float32


def test_original_beats_cache_and_keeps_its_name(tmp_path, isolated):
    train = np.random.default_rng(1).random((4, 784))
    scipy.io.savemat(tmp_path / "digs3pts_1.mat", {"bdata": train, "bdatatest": train[:2]})
    data = load_dataset("curves", tmp_path)
    assert data.name == "curves" and data.source == str(tmp_path / "digs3pts_1.mat")
    assert torch.allclose(data.train, torch.from_numpy(train.astype(np.float32)))


def test_curves_mat_out_of_range_and_missing_variable(tmp_path):
    scipy.io.savemat(
        tmp_path / "a.mat", {"bdata": np.full((2, 784), 2.0), "bdatatest": np.zeros((1, 784))}
    )
    with pytest.raises(
        DataError, match=r"a.mat: 'bdata' has values in \[2.0, 2.0\], expected \[0, 1\]"
    ):
        read_curves_mat(tmp_path / "a.mat")
    scipy.io.savemat(tmp_path / "b.mat", {"bdata": np.zeros((2, 784))})
    with pytest.raises(DataError, match=r"b.mat: missing variable\(s\) \['bdatatest'\]"):
        read_curves_mat(tmp_path / "b.mat")
    scipy.io.savemat(
        tmp_path / "c.mat", {"bdata": np.zeros((2, 700)), "bdatatest": np.zeros((1, 784))}
    )
    with pytest.raises(DataError, match=r"'bdata' has shape \(2, 700\), expected \(N, 784\)"):
        read_curves_mat(tmp_path / "c.mat")


def test_not_a_mat_file(tmp_path):
    (tmp_path / "digs3pts_1.mat").write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match="digs3pts_1.mat: not a readable MATLAB file"):
        read_curves_mat(tmp_path / "digs3pts_1.mat")


def test_faces_mat_columns_and_martens_split(tmp_path):
    # 40 people x 2 images, by person
    images = np.arange(80 * 625, dtype=np.float64).reshape(80, 625)
    # one per column
    scipy.io.savemat(tmp_path / "newfaces_rot_single.mat", {"newfaces_single": images.T})
    train, test = read_faces_mat(tmp_path / "newfaces_rot_single.mat")
    np.testing.assert_array_equal(train, images[:50])  # people 1-25
    np.testing.assert_array_equal(test, images[60:])  # people 31-40


def test_olivetti_mat_is_upright_and_ordered(shared_data_dir):
    faces = read_olivetti_mat(shared_data_dir / "olivettifaces.mat")
    raw = scipy.io.loadmat(shared_data_dir / "olivettifaces.mat")["faces"]
    assert faces.shape == (400, 64, 64)
    np.testing.assert_array_equal(faces[7], raw[:, 7].reshape(64, 64, order="F"))


def test_att_faces_fallback_resembles_olivetti(shared_data_dir):
    att = read_att_faces(shared_data_dir / "att_faces")
    olivetti = read_olivetti_mat(shared_data_dir / "olivettifaces.mat").astype(np.float64)
    assert att.shape == (400, 64, 64)
    # Same people and images, though Roweis' crops are not one fixed window: matched pairs correlate
    # clearly, the next person's same-index image less; a wrong crop or order falls below these
    # bounds.
    flat_a, flat_o = att.reshape(400, -1), olivetti.reshape(400, -1)
    corr = [np.corrcoef(flat_a[i], flat_o[i])[0, 1] for i in range(0, 400, 7)]
    wrong = [np.corrcoef(flat_a[i], flat_o[(i + 10) % 400])[0, 1] for i in range(0, 400, 7)]
    assert np.mean(corr) > 0.5 and np.mean(corr) > np.mean(wrong) + 0.15  # measured 0.52 vs 0.30


def test_pgm_errors(tmp_path):
    (tmp_path / "a.pgm").write_bytes(b"P5\n4 2\n255\n" + bytes(range(8)))
    assert read_pgm(tmp_path / "a.pgm").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    (tmp_path / "b.pgm").write_bytes(b"P5\n4 2\n255\n" + bytes(5))
    with pytest.raises(DataError, match="b.pgm: wrong length, 5 pixel bytes, expected 8"):
        read_pgm(tmp_path / "b.pgm")
    (tmp_path / "c.pgm").write_bytes(b"P2\n1 1\n255\n0")
    with pytest.raises(DataError, match="c.pgm: not an 8-bit binary PGM"):
        read_pgm(tmp_path / "c.pgm")
