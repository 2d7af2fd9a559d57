"""Reader for the IDX format of MNIST (LeCun et al.), gzip-compressed or raw, with checksums.

An IDX image file is a 4-byte magic number ``0x00000803`` (unsigned bytes, 3 dimensions), three
big-endian uint32 sizes (count, rows, columns) and ``count * rows * cols`` pixel bytes. The sha256
is checked on the *uncompressed* bytes, so a locally re-gzipped copy verifies like the original.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from natgrad.data.errors import DataError

IMAGE_MAGIC = 0x00000803
_HEADER_BYTES = 16


def read_idx_bytes(path: Path) -> bytes:
    """The uncompressed content of ``path`` (gunzipped when its name ends in ``.gz``).

    Raises:
        DataError: naming the file when it cannot be read or its gzip stream is truncated/corrupt.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from exc
    return gunzip(raw, path) if path.suffix == ".gz" else raw


def gunzip(raw: bytes, path: Path) -> bytes:
    """Decompress gzip bytes read from ``path``, turning gzip failures into a DataError naming
    it.
    """
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise DataError(f"{path}: truncated gzip stream ({exc})") from exc
    except (OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from exc


def parse_idx_images(content: bytes, path: Path, *, count: int, rows: int, cols: int) -> np.ndarray:
    """Check the IDX header and length, return the pixels as uint8 ``(count, rows * cols)``.

    Raises:
        DataError: on a bad magic number, unexpected sizes, or a wrong content length.
    """
    if len(content) < _HEADER_BYTES:
        raise DataError(
            f"{path}: wrong length, {len(content)} bytes is shorter than the 16-byte IDX header"
        )
    magic, n, r, c = np.frombuffer(content[:_HEADER_BYTES], dtype=">u4")
    if magic != IMAGE_MAGIC:
        raise DataError(
            f"{path}: bad magic number 0x{int(magic):08x}, expected 0x{IMAGE_MAGIC:08x} (IDX ubyte "
            "images)"
        )
    if (n, r, c) != (count, rows, cols):
        raise DataError(
            f"{path}: header says {n} images of {r}x{c}, expected {count} of {rows}x{cols}"
        )
    expected = _HEADER_BYTES + count * rows * cols
    if len(content) != expected:
        raise DataError(
            f"{path}: wrong length, {len(content)} bytes uncompressed, expected {expected} "
            "(truncated?)"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=_HEADER_BYTES).reshape(count, rows * cols)


def verify_sha256(content: bytes, path: Path, expected: str) -> None:
    """Raise DataError naming the file and both sums when ``sha256(content) != expected``."""
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected:
        raise DataError(
            f"{path}: checksum mismatch of the uncompressed content: sha256 is {actual}, expected "
            f"{expected}"
        )


def read_idx_images(
    path: Path, *, sha256: str, count: int, rows: int = 28, cols: int = 28
) -> np.ndarray:
    """Read and fully verify an IDX image file: structure first, then the sha256 of the content."""
    content = read_idx_bytes(path)
    images = parse_idx_images(content, path, count=count, rows=rows, cols=cols)
    verify_sha256(content, path, sha256)
    return images
