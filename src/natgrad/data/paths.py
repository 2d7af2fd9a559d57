"""The data-directory search path.

Order (first hit wins): ``--data-dir``, then ``$NATGRAD_DATA``, then ``<repo root>/../shared/data``
(only when natgrad runs from a source checkout), then ``~/.cache/natgrad``. Generated caches are
written to the first *writable* directory among ``--data-dir``, ``$NATGRAD_DATA`` and
``~/.cache/natgrad``; the shared directory is read-only input and is never written to.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from natgrad.data.errors import DataError

ENV_VAR = "NATGRAD_DATA"


def repo_root() -> Path | None:
    """The checkout holding natgrad's pyproject.toml, walking up from this file (None if
    installed).
    """
    for parent in Path(__file__).resolve().parents:
        pyproject = parent / "pyproject.toml"
        if pyproject.is_file() and 'name = "natgrad"' in pyproject.read_text(errors="replace"):
            return parent
    return None


def shared_data_dir() -> Path | None:
    """``<repo root>/../shared/data``, or None outside a source checkout."""
    root = repo_root()
    return None if root is None else root.parent / "shared" / "data"


def user_cache_dir() -> Path:
    """``~/.cache/natgrad``."""
    return Path.home() / ".cache" / "natgrad"


def _env_dir() -> Path | None:
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def _unique(paths: Iterable[Path | None]) -> list[Path]:
    seen: list[Path] = []
    for path in paths:
        if path is not None and path not in seen:
            seen.append(path)
    return seen


def data_search_path(data_dir: str | Path | None = None) -> list[Path]:
    """Directories searched for data, in priority order (existing or not, duplicates removed)."""
    explicit = Path(data_dir).expanduser() if data_dir is not None else None
    return _unique([explicit, _env_dir(), shared_data_dir(), user_cache_dir()])


def require_data_dir(data_dir: str | Path | None) -> None:
    """Refuse an explicitly given data directory that does not exist (it is never silently skipped).

    Raises:
        DataError: naming the directory.
    """
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataError(
            f"data directory {data_dir} (--data-dir or data.data_dir) does not exist or is not a "
            "directory; fix the path or omit it to use the search path"
        )


def find_file(candidates: Iterable[str], search_path: list[Path]) -> Path | None:
    """First existing ``directory / candidate`` over the search path (directory-major order)."""
    names = list(candidates)
    for directory in search_path:
        for name in names:
            path = directory / name
            if path.is_file():
                return path
    return None


def _is_writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def writable_data_dir(data_dir: str | Path | None = None) -> Path:
    """First writable (creatable) directory among ``--data-dir``, ``$NATGRAD_DATA``, the user cache.

    Raises:
        DataError: if none of them can be written to.
    """
    explicit = Path(data_dir).expanduser() if data_dir is not None else None
    candidates = _unique([explicit, _env_dir(), user_cache_dir()])
    for directory in candidates:
        if _is_writable(directory):
            return directory
    tried = ", ".join(str(path) for path in candidates)
    raise DataError(
        f"no writable data directory; tried {tried}. Pass --data-dir or set ${ENV_VAR}."
    )
