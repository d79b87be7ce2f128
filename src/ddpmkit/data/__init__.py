"""Datasets: 2-D toys, MNIST/Fashion-MNIST (IDX), scikit-learn digits, folders of images."""

from ddpmkit.data.images import (
    DatasetError,
    ImageData,
    dataset_fingerprint,
    from_model_range,
    random_hflip,
    to_model_range,
)
from ddpmkit.data.registry import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageData",
    "dataset_fingerprint",
    "from_model_range",
    "load_dataset",
    "random_hflip",
    "to_model_range",
]
