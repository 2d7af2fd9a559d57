"""Datasets of the natural-gradient benchmarks: MNIST (original), CURVES and FACES (original or
regenerated).

See docs/data.md for the search path, the checks, and every choice made when regenerating.
"""

from natgrad.data.datasets import (
    DATASET_NAMES,
    Dataset,
    DatasetStatus,
    load_dataset,
    prepare_dataset,
)
from natgrad.data.errors import DataError
from natgrad.data.mnist import download_mnist
from natgrad.data.paths import data_search_path, writable_data_dir
from natgrad.data.status import format_dataset_table, list_datasets, summarize_dataset

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "Dataset",
    "DatasetStatus",
    "data_search_path",
    "download_mnist",
    "format_dataset_table",
    "list_datasets",
    "load_dataset",
    "prepare_dataset",
    "summarize_dataset",
    "writable_data_dir",
]
