"""What is found where and what it looks like: the data layer's half of ``natgrad data
list|prepare``.

By default checks presence and manifests only (cheap) and says "not verified"; with ``verify`` every
dataset found is loaded, which checks every checksum (as training does).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from natgrad.data import mnist, sources
from natgrad.data.cache import read_manifest
from natgrad.data.calibration import PAPER_PCA_ERROR, pca_test_error
from natgrad.data.datasets import (
    DATASET_NAMES,
    Dataset,
    DatasetStatus,
    cache_dir_name,
    find_cache,
    load_dataset,
)
from natgrad.data.errors import DataError
from natgrad.data.paths import data_search_path, find_file, require_data_dir

NOT_VERIFIED = "not verified (`natgrad data list --verify` checks the checksums)"


def _mnist_status(search_path: list[Path]) -> DatasetStatus:
    if not any(
        find_file(mnist.candidate_names(spec.name), search_path) for spec in mnist.IMAGES.values()
    ):
        names = ", ".join(spec.name for spec in mnist.IMAGES.values())
        return DatasetStatus(
            "mnist",
            "missing",
            None,
            f"missing {names}; run `natgrad data download mnist`",
            search_path,
        )
    try:
        found = mnist.locate_images(search_path)
    except DataError as exc:
        return DatasetStatus("mnist", "invalid", None, str(exc), search_path)
    return DatasetStatus(
        "mnist", "original", found["train"].parent, "60000 train / 10000 test (IDX)", search_path
    )


def _generated_status(name: str, search_path: list[Path]) -> DatasetStatus:
    original = find_file(
        sources.CURVES_ORIGINAL if name == "curves" else sources.FACES_ORIGINAL, search_path
    )
    if original is not None:
        return DatasetStatus(name, "original", original, "published file", search_path)
    cache = find_cache(name, search_path)
    if cache is None:
        return DatasetStatus(
            name, "missing", None, f"run `natgrad data prepare {name}`", search_path
        )
    try:
        manifest = read_manifest(cache)
    except DataError as exc:
        return DatasetStatus(name, "invalid", cache, str(exc), search_path)
    arrays = manifest["arrays"]
    sizes = " / ".join(
        f"{arrays[key]['shape'][0]} {key}" for key in ("train", "test") if key in arrays
    )
    detail = f"{cache_dir_name(name)}: {sizes}, seed {manifest.get('seed')}"
    return DatasetStatus(name, "regenerated", cache, detail, search_path)


def _verified(status: DatasetStatus, data_dir: str | Path | None) -> DatasetStatus:
    """``status`` after loading its dataset (every checksum checked): 'verified', or 'invalid' with
    why.
    """
    try:
        load_dataset(status.name, data_dir)
    except DataError as exc:
        return replace(status, state="invalid", detail=str(exc))
    return replace(status, detail=f"{status.detail}, verified")


def list_datasets(data_dir: str | Path | None = None, verify: bool = False) -> list[DatasetStatus]:
    """One status per dataset in :data:`DATASET_NAMES`, with the directories searched; a dataset
    found is marked "not verified", or with ``verify`` loaded and checked.

    Raises:
        DataError: an explicit ``data_dir`` does not exist.
    """
    require_data_dir(data_dir)
    search_path = data_search_path(data_dir)
    statuses = [_mnist_status(search_path)] + [
        _generated_status(name, search_path) for name in DATASET_NAMES[1:]
    ]
    found = [status.state in ("original", "regenerated") for status in statuses]
    if verify:
        return [
            _verified(status, data_dir) if ok else status for status, ok in zip(statuses, found)
        ]
    return [
        replace(status, detail=f"{status.detail}, {NOT_VERIFIED}") if ok else status
        for status, ok in zip(statuses, found)
    ]


def format_dataset_table(statuses: list[DatasetStatus]) -> str:
    """A plain-text table of statuses followed by the search path (for ``natgrad data list``)."""
    rows = [("dataset", "state", "location", "detail")]
    rows += [(s.name, s.state, str(s.location) if s.location else "-", s.detail) for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3]
        for row in rows
    ]
    searched = statuses[0].searched if statuses else []
    lines.append("search path (first hit wins): " + (", ".join(str(p) for p in searched) or "-"))
    return "\n".join(line.rstrip() for line in lines)


def summarize_dataset(dataset: Dataset, *, with_pca: bool = False) -> str:
    """One line of statistics (for ``natgrad data prepare``), optionally with the PCA calibration
    check.

    With ``with_pca`` the PCA test error of :mod:`natgrad.data.calibration` is printed next to the
    paper's value (a few seconds for FACES).
    """
    train, test = dataset.train, dataset.test
    rows, cols = dataset.image_shape
    line = (
        f"{dataset.name}: {len(train)} train / {len(test)} test, {rows}x{cols}, "
        f"values [{min(train.min(), test.min()):.3g}, {max(train.max(), test.max()):.3g}], "
        f"mean pixel train {train.mean():.4f} / test {test.mean():.4f}"
    )
    if with_pca:
        base = dataset.name.removesuffix("-regen")
        components, paper = PAPER_PCA_ERROR[base]
        error = pca_test_error(train.numpy(), test.numpy(), components)
        line += f", PCA-{components} test error {error:.3f} (paper {paper:g})"
    return line
