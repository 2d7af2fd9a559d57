"""Search-path order: --data-dir, $NATGRAD_DATA, ../shared/data, ~/.cache/natgrad."""

from __future__ import annotations

from pathlib import Path

import pytest

from natgrad.data import DataError, data_search_path, paths, writable_data_dir
from natgrad.data.paths import find_file


def test_order_is_data_dir_env_shared_cache(isolated, tmp_path, monkeypatch):
    monkeypatch.setenv("NATGRAD_DATA", str(tmp_path / "env"))
    assert data_search_path(tmp_path / "cli") == [
        tmp_path / "cli",
        tmp_path / "env",
        isolated["shared"],
        isolated["cache"],
    ]


def test_without_data_dir_or_env(isolated):
    assert data_search_path() == [isolated["shared"], isolated["cache"]]


def test_duplicates_removed(isolated, monkeypatch):
    monkeypatch.setenv("NATGRAD_DATA", str(isolated["shared"]))
    assert data_search_path(isolated["shared"]) == [isolated["shared"], isolated["cache"]]


def test_real_shared_dir_is_beside_the_checkout():
    root = paths.repo_root()
    assert root is not None and (root / "pyproject.toml").is_file()
    assert paths.shared_data_dir() == root.parent / "shared" / "data"


def test_first_hit_wins_in_priority_order(isolated, tmp_path, monkeypatch):
    for name in ("cli", "env"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.bin").write_bytes(name.encode())
    (isolated["shared"] / "x.bin").write_bytes(b"shared")
    monkeypatch.setenv("NATGRAD_DATA", str(tmp_path / "env"))
    assert find_file(["x.bin"], data_search_path(tmp_path / "cli")) == tmp_path / "cli" / "x.bin"
    assert find_file(["x.bin"], data_search_path()) == tmp_path / "env" / "x.bin"
    monkeypatch.delenv("NATGRAD_DATA")
    assert find_file(["x.bin"], data_search_path()) == isolated["shared"] / "x.bin"


def test_writable_dir_skips_shared_and_prefers_data_dir(isolated, tmp_path, monkeypatch):
    assert writable_data_dir() == isolated["cache"]
    monkeypatch.setenv("NATGRAD_DATA", str(tmp_path / "env"))
    assert writable_data_dir() == tmp_path / "env"
    assert writable_data_dir(tmp_path / "cli") == tmp_path / "cli"


def test_no_writable_dir_is_an_error(isolated, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NATGRAD_DATA", str(blocker / "sub"))
    monkeypatch.setattr(paths, "user_cache_dir", lambda: Path(blocker / "cache"))
    with pytest.raises(DataError, match="no writable data directory"):
        writable_data_dir(blocker / "cli")
