"""download_mnist without a network: the fetch is replaced by the local copies (or corrupted
ones).
"""

from __future__ import annotations

import gzip

import pytest

from natgrad.data import DataError, download_mnist, load_dataset, mnist


@pytest.fixture
def local_fetch(shared_data_dir, monkeypatch):
    calls = []

    def fetch(name: str) -> bytes:
        calls.append(name)
        return (shared_data_dir / "mnist" / f"{name}.gz").read_bytes()

    monkeypatch.setattr(mnist, "_fetch", fetch)
    return calls


def test_download_verifies_writes_and_skips_valid_files(local_fetch, tmp_path, isolated):
    paths = download_mnist(tmp_path)
    expected = sorted(f"{spec.name}.gz" for spec in (*mnist.IMAGES.values(), *mnist.LABELS))
    assert sorted(p.name for p in paths) == expected
    # no temp files
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(p.name for p in paths)
    assert load_dataset("mnist", tmp_path).source.startswith(str(tmp_path / "mnist"))
    download_mnist(tmp_path)
    assert len(local_fetch) == 4  # the second call found valid files


def test_bad_download_is_rejected_and_not_kept(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist, "_fetch", lambda name: gzip.compress(b"\x00\x00\x08\x03 not mnist"))
    with pytest.raises(DataError, match="checksum mismatch") as info:
        download_mnist(tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert list((tmp_path / "mnist").iterdir()) == []
