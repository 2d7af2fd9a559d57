"""Fixtures isolating the data search path from the user's real directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from natgrad.data import paths


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """No $NATGRAD_DATA, HOME in tmp_path, and the shared directory replaced by an empty tmp one."""
    home, shared = tmp_path / "home", tmp_path / "shared"
    home.mkdir()
    shared.mkdir()
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(paths, "shared_data_dir", lambda: shared)
    return {"home": home, "shared": shared, "cache": home / ".cache" / "natgrad"}
