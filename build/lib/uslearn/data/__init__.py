"""Data room: dataset directory contract, importers, splits, sampling. Knows no models."""

from uslearn.data.dataset import CLASSES, SPLITS, Dataset, DatasetError
from uslearn.data.writer import DatasetWriter

__all__ = ["CLASSES", "SPLITS", "Dataset", "DatasetError", "DatasetWriter"]
