"""Readers for the original MATLAB files and for the Olivetti / ORL face sources.

* ``digs3pts_1.mat`` (CURVES, Hinton & Salakhutdinov 2006): ``bdata`` (20000 x 784) and
  ``bdatatest`` (10000 x 784), one image per row, values in [0, 1].
* ``newfaces_rot_single.mat`` (FACES, as loaded by Martens' HF code): ``newfaces_single``, 625 x
  165600, one image per column, ordered by person; train = first 25/40 of the columns, test = last
  10/40 (Martens 2010). Either orientation is accepted.
* ``olivettifaces.mat`` (S. Roweis): ``faces``, 4096 x 400 uint8, columns in Fortran order.
* ``att_faces/s<p>/<i>.pgm`` (ORL, 92x112 P5): fallback source, a fixed face crop resized to 64x64.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io
from scipy import ndimage

from natgrad.data.errors import DataError

CURVES_ORIGINAL = ("digs3pts_1.mat", "curves/digs3pts_1.mat")
FACES_ORIGINAL = ("newfaces_rot_single.mat", "faces/newfaces_rot_single.mat")
OLIVETTI = ("olivettifaces.mat", "faces/olivettifaces.mat")
ATT_DIR = "att_faces"
_PEOPLE = 40
_PER_PERSON = 10
_ATT_CROP = (36, 12, 70)  # top row, left column, side of the square taken from 112x92
_PGM_HEADER = re.compile(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s")


def load_mat(path: Path, variables: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB file (v4-v7.2).

    Raises:
        DataError: naming the file if it is unreadable, HDF5-based (v7.3), or lacks a variable.
    """
    try:
        content = scipy.io.loadmat(str(path), variable_names=list(variables))
    except NotImplementedError as exc:
        raise DataError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save it with save -v7"
        ) from exc
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable MATLAB file ({exc})") from exc
    missing = [name for name in variables if name not in content]
    if missing:
        raise DataError(f"{path}: missing variable(s) {missing}; expected {list(variables)}")
    return {name: content[name] for name in variables}


def _check_pixels(array: np.ndarray, path: Path, name: str, width: int) -> np.ndarray:
    if array.ndim != 2 or array.shape[1] != width:
        raise DataError(f"{path}: variable '{name}' has shape {array.shape}, expected (N, {width})")
    return np.ascontiguousarray(array, dtype=np.float32)


def read_curves_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """CURVES train (bdata) and test (bdatatest) as float32 (N, 784); values must lie in [0, 1]."""
    content = load_mat(path, ("bdata", "bdatatest"))
    train = _check_pixels(content["bdata"], path, "bdata", 784)
    test = _check_pixels(content["bdatatest"], path, "bdatatest", 784)
    for name, array in (("bdata", train), ("bdatatest", test)):
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise DataError(
                f"{path}: '{name}' has values in [{array.min()}, {array.max()}], expected [0, 1]"
            )
    return train, test


def read_faces_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """FACES with Martens' split: train = first 25/40 of the images, test = last 10/40, float32 (N,
    625).
    """
    data = load_mat(path, ("newfaces_single",))["newfaces_single"]
    if data.ndim == 2 and data.shape[0] == 625 and data.shape[1] != 625:
        data = data.T
    images = _check_pixels(data, path, "newfaces_single", 625)
    if len(images) % _PEOPLE:
        raise DataError(f"{path}: {len(images)} images is not a multiple of {_PEOPLE} people")
    per_person = len(images) // _PEOPLE
    return images[: 25 * per_person], images[-10 * per_person :]


def read_olivetti_mat(path: Path) -> np.ndarray:
    """The 400 Olivetti faces as uint8 (400, 64, 64), upright, ordered s1 image 1 ... s40 image
    10.
    """
    faces = load_mat(path, ("faces",))["faces"]
    if faces.shape != (4096, _PEOPLE * _PER_PERSON):
        raise DataError(f"{path}: variable 'faces' has shape {faces.shape}, expected (4096, 400)")
    return np.ascontiguousarray(faces.T.reshape(-1, 64, 64).transpose(0, 2, 1))


def read_pgm(path: Path) -> np.ndarray:
    """A binary (P5) 8-bit PGM image as uint8 (rows, cols)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from exc
    header = _PGM_HEADER.match(raw)
    if header is None or header.group(3) != b"255":
        raise DataError(f"{path}: not an 8-bit binary PGM (P5, maxval 255)")
    cols, rows = int(header.group(1)), int(header.group(2))
    pixels = raw[header.end() :]  # exactly one whitespace byte separates maxval from the pixels
    if len(pixels) != rows * cols:
        raise DataError(f"{path}: wrong length, {len(pixels)} pixel bytes, expected {rows * cols}")
    return np.frombuffer(pixels, dtype=np.uint8).reshape(rows, cols)


def read_att_faces(directory: Path) -> np.ndarray:
    """The 400 ORL faces as float64 (400, 64, 64), ordered like olivettifaces.mat.

    An approximation of Roweis' 64x64 crops: rows 36..105 and columns 12..81 of each 112x92 image
    (the fixed square that best correlates with olivettifaces.mat: mean per-image correlation about
    0.52, against 0.30 for mismatched pairs; his crops are not one fixed window), resized
    bilinearly.
    """
    top, left, side = _ATT_CROP
    images = []
    for person in range(1, _PEOPLE + 1):
        for index in range(1, _PER_PERSON + 1):
            image = read_pgm(directory / f"s{person}" / f"{index}.pgm").astype(np.float64)
            crop = image[top : top + side, left : left + side]
            images.append(ndimage.zoom(crop, 64 / side, order=1, mode="nearest", grid_mode=True))
    return np.stack(images)
