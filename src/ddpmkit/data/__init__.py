"""Datasets: MNIST/Fashion-MNIST (IDX), scikit-learn digits, folders of images; 2-D toys."""

from ddpmkit.data.folder import load_image_folder
from ddpmkit.data.idx import load_mnist_like
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
    "load_image_folder",
    "load_mnist_like",
    "random_hflip",
    "to_model_range",
]
