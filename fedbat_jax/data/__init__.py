"""Data layer: dataset loaders and client partitions."""

from fedbat_jax.data.datasets import DATASETS, Dataset, load_dataset
from fedbat_jax.data.partitions import PARTITIONS, format_histograms, label_histograms, partition, size_summary

__all__ = [
    "DATASETS",
    "Dataset",
    "load_dataset",
    "PARTITIONS",
    "partition",
    "size_summary",
    "label_histograms",
    "format_histograms",
]
