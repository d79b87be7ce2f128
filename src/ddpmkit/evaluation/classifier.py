"""Feature extractors for image metrics: a compact classifier per dataset, and a generic one.

* :class:`FeatureNet`: a small CNN (conv 32-64-128, BatchNorm, ReLU, max pooling, global average
  pooling) trained per dataset by ``scripts/train_classifier.py``. Its penultimate features
  (``feature_dim`` = 128, after global average pooling) feed the Frechet distance and
  precision/recall of :mod:`ddpmkit.evaluation.metrics`; its softmax feeds the Inception-Score
  analogue and the conditional accuracy. Weights for ``fashion_mnist``, ``mnist`` and ``digits``
  ship with the package (``ddpmkit/weights/<dataset>_classifier.safetensors``, float16, ~0.5 MB)
  next to a JSON with the architecture, the measured test accuracy and its test split, the
  training command and the SHA-256 of the tensor file (the MNIST one: trained on 8,000 MNIST
  training images, tested on 2,000 held out; see ``scripts/train_classifier.py``). Weights
  trained with ``--out`` in the user cache (``classifiers`` in :func:`ddpmkit.io.cache_dir`,
  default ``~/.cache/ddpmkit/classifiers``) are where :func:`load_classifier` looks second.
* :func:`generic_extractor`: for any other images, a fixed random-weight CNN that needs no
  download. Its weights come from a seeded ``torch.Generator`` on the CPU, so every machine builds
  the same network. Random convolutional features are a known-usable but weaker substitute for
  Inception features: they still separate distributions (Naeem et al. 2020, "Reliable fidelity
  and diversity metrics for generative models", study randomly initialised embeddings), but
  Frechet distances on them are *not* comparable to published FID values, only to each other.

Weights are read only with safetensors (nothing is unpickled); the file's SHA-256 and every
tensor's shape are checked against the JSON before use. Problems with a weights file raise
:class:`~ddpmkit.errors.CheckpointError`, images of the wrong shape for a dataset's
classifier :class:`~ddpmkit.errors.DatasetError` (both ``ValueError``, one-line messages).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ddpmkit.data.images import to_model_range
from ddpmkit.errors import CheckpointError, DatasetError
from ddpmkit.io import cache_dir, file_sha256, read_json_object

__all__ = [
    "CLASSIFIER_DATASETS",
    "GENERIC_EXTRACTOR_NAME",
    "Extracted",
    "FeatureNet",
    "RandomFeatureCNN",
    "classifier_meta_path",
    "extract",
    "file_sha256",
    "generic_extractor",
    "holdout_split",
    "load_classifier",
    "load_classifier_file",
    "shipped_classifier_path",
    "tensors_to_store",
    "user_classifier_path",
]

CLASSIFIER_DATASETS = ("fashion_mnist", "mnist", "digits")
GENERIC_EXTRACTOR_NAME = "random-feature CNN (no download; not comparable to FID)"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
FORMAT_VERSION = 1


class FeatureNet(nn.Module):
    """Compact CNN classifier: input float in [-1, 1] (N, C, H, W) -> logits (N, K).

    One stage per entry of ``widths``: 3x3 conv (no bias) + BatchNorm + ReLU, then 2x2 max pooling
    between stages while the map is at least 2 pixels wide. The last stage is average-pooled to a
    ``pool`` x ``pool`` grid (keeping coarse layout), flattened, and mapped by a linear layer +
    ReLU to the penultimate features (``feature_dim``); a linear layer gives the logits.
    ``dataset``, ``test_accuracy`` and ``meta`` are filled in by :func:`load_classifier`.
    """

    def __init__(
        self,
        channels: int = 1,
        num_classes: int = 10,
        image_size: tuple[int, int] = (28, 28),
        widths: tuple[int, ...] = (32, 64, 128),
        pool: int = 3,
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        self.channels = int(channels)
        self.num_classes = int(num_classes)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.widths = tuple(int(w) for w in widths)
        self.pool = int(pool)
        self.feature_dim = int(feature_dim)
        self.dataset: str | None = None
        self.test_accuracy: float | None = None
        self.meta: dict[str, Any] = {}
        layers: list[nn.Module] = []
        c_in, side = self.channels, min(self.image_size)
        for i, w in enumerate(self.widths):
            layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            if i < len(self.widths) - 1 and side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            c_in = w
        if not 1 <= self.pool <= side:
            raise ValueError(f"pool must be in [1, {side}] (the last stage's size), got {pool}")
        self.final_size = side
        layers += [
            nn.AdaptiveAvgPool2d(self.pool),
            nn.Flatten(),
            nn.Linear(c_in * self.pool * self.pool, self.feature_dim),
            nn.ReLU(),
        ]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def architecture(self) -> dict[str, Any]:
        """The constructor arguments, as stored in the weights' JSON."""
        return {
            "name": "FeatureNet",
            "channels": self.channels,
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "widths": list(self.widths),
            "pool": self.pool,
            "feature_dim": self.feature_dim,
        }

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, feature_dim): the hidden layer before the logits."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) for images x in [-1, 1] (N, C, H, W)."""
        return self.head(self.features(x))


def tensors_to_store(net: FeatureNet) -> dict[str, Tensor]:
    """What a weights file holds: the state dict without BatchNorm's step counters."""
    return {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def shipped_classifier_path(dataset: str) -> Path:
    """Where the package's own weights for ``dataset`` are (they may not exist, e.g. MNIST)."""
    return WEIGHTS_DIR / f"{dataset}_classifier.safetensors"


def user_classifier_path(dataset: str) -> Path:
    """``$DDPMKIT_CACHE/classifiers/<dataset>_classifier.safetensors`` (default ~/.cache/...).

    The default output of ``scripts/train_classifier.py`` for datasets without shipped weights.
    """
    return cache_dir() / "classifiers" / f"{dataset}_classifier.safetensors"


def classifier_meta_path(weights: Path) -> Path:
    """The JSON that describes a weights file: same name, ``.json`` suffix."""
    return Path(weights).with_suffix(".json")


def _read_meta(path: Path) -> dict[str, Any]:
    meta = read_json_object(path, CheckpointError, "classifier weights need their JSON")
    missing = [k for k in ("dataset", "architecture", "sha256") if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {', '.join(missing)}")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version!r} is newer than this ddpmkit supports "
            f"({FORMAT_VERSION}); upgrade ddpmkit"
        )
    return meta


def _build(meta: dict[str, Any], path: Path) -> FeatureNet:
    arch = meta["architecture"]
    try:
        net = FeatureNet(
            channels=int(arch["channels"]),
            num_classes=int(arch["num_classes"]),
            image_size=(int(arch["image_size"][0]), int(arch["image_size"][1])),
            widths=tuple(int(w) for w in arch["widths"]),
            pool=int(arch["pool"]),
            feature_dim=int(arch["feature_dim"]),
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: bad 'architecture' ({e!r})") from None
    if arch.get("name", "FeatureNet") != "FeatureNet":
        raise CheckpointError(f"{path}: architecture {arch.get('name')!r} is not FeatureNet")
    return net


def load_classifier_file(path: str | Path) -> FeatureNet:
    """Load classifier weights ``path`` (.safetensors) described by the JSON next to it.

    Checks the file's SHA-256 against the JSON, then every tensor's name and shape against the
    architecture in the JSON; tensors are cast to float32. Returns the network in eval mode on
    the CPU with ``dataset``, ``test_accuracy`` and ``meta`` set. Raises CheckpointError.
    """
    path = Path(path)
    meta = _read_meta(classifier_meta_path(path))
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file is missing")
    if file_sha256(path) != meta["sha256"]:
        raise CheckpointError(
            f"{path}: contents do not match the sha256 in {classifier_meta_path(path).name} "
            "(corrupted or replaced); retrain with scripts/train_classifier.py"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    net = _build(meta, path)
    expected = tensors_to_store(net)
    if set(tensors) != set(expected):
        diff = sorted(set(tensors) ^ set(expected))
        raise CheckpointError(
            f"{path}: tensor names do not match the architecture (differ: {', '.join(diff[:4])})"
        )
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: tensor {k} has shape {tuple(tensors[k].shape)}, the architecture "
                f"needs {tuple(v.shape)}"
            )
    net.load_state_dict({k: t.float() for k, t in tensors.items()}, strict=False)
    net.eval()
    net.requires_grad_(False)
    net.dataset = str(meta["dataset"])
    acc = meta.get("test_accuracy")
    net.test_accuracy = float(acc) if isinstance(acc, (int, float)) else None
    net.meta = meta
    return net


def load_classifier(dataset: str, *, path: str | Path | None = None) -> FeatureNet:
    """The classifier for ``dataset`` ('fashion_mnist', 'mnist' or 'digits'), eval mode, CPU.

    Without ``path``: the shipped weights, else the user cache (:func:`user_classifier_path`);
    if neither exists, a CheckpointError says how to train them. With ``path``: that file (its
    JSON must name the same dataset).
    """
    if dataset not in CLASSIFIER_DATASETS:
        raise DatasetError(
            f"no classifier for dataset {dataset!r}; expected one of "
            f"{', '.join(CLASSIFIER_DATASETS)} (other images: use generic_extractor)"
        )
    if path is None:
        candidates = [shipped_classifier_path(dataset), user_classifier_path(dataset)]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise CheckpointError(
                f"no {dataset} classifier weights (looked for {candidates[0]} and "
                f"{candidates[1]}); make them with `python scripts/train_classifier.py {dataset}`"
            )
        path = found[0]
    net = load_classifier_file(path)
    if net.dataset != dataset:
        raise CheckpointError(f"{path}: these weights are for {net.dataset!r}, not {dataset!r}")
    return net


def holdout_split(labels: Tensor, fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Fixed stratified split for a dataset with a single split (scikit-learn digits).

    Each class's indices are permuted by a ``torch.Generator`` seeded with ``seed`` (one
    generator, classes in increasing order) and the first ``round(fraction * n_class)`` are held
    out. Returns sorted (train_indices, test_indices), int64.
    """
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        k = round(fraction * idx.numel())
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


class RandomFeatureCNN(nn.Module):
    """Fixed random-weight CNN: any (N, C, H, W) in [-1, 1] -> pooled features (N, 256).

    Input with 1 channel is replicated to 3 (so a grayscale image and its RGB copy give the same
    features); other channel counts get their own first-layer filters. Images are resized to
    ``size`` x ``size`` (bilinear, antialiased; the aspect ratio is not kept). Three stages of
    3x3 conv + ReLU (widths 32, 64, 160, He-scaled Gaussian weights, no biases) with 2x2 average
    pooling in between and stride 2 in the middle stage (64 -> 32 -> 16 -> 8 pixels: ~14 million
    multiply-adds per image); the features are each stage's global average, concatenated
    (multi-scale, 32 + 64 + 160 = 256). Weights are buffers drawn from
    ``torch.Generator().manual_seed(seed)`` on the CPU in a fixed order: no download and no
    global RNG.
    """

    def __init__(
        self, channels: int, size: int = 64, widths: tuple[int, ...] = (32, 64, 160), seed: int = 0
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = int(channels)
        self.size = int(size)
        self.feature_dim = sum(widths)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        c_in = 3 if channels in (1, 3) else channels
        self.weights: list[str] = []
        self.strides = tuple(2 if 0 < i < len(widths) - 1 else 1 for i in range(len(widths)))
        for i, w in enumerate(widths):
            fan_in = c_in * 9
            weight = torch.randn(w, c_in, 3, 3, generator=gen, dtype=torch.float32)
            self.register_buffer(f"w{i}", weight * math.sqrt(2.0 / fan_in))
            self.weights.append(f"w{i}")
            c_in = w

    def forward(self, x: Tensor) -> Tensor:
        """Features (N, feature_dim) float32 for images x in [-1, 1] (N, C, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise DatasetError(
                f"generic extractor built for {self.channels} channel(s) got images of shape "
                f"{tuple(x.shape)}"
            )
        h = x.float()
        if self.channels == 1:
            h = h.expand(-1, 3, -1, -1)
        if tuple(h.shape[2:]) != (self.size, self.size):
            h = F.interpolate(
                h, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )
        feats = []
        for i, name in enumerate(self.weights):
            if i:
                h = F.avg_pool2d(h, 2)
            h = F.relu(F.conv2d(h, getattr(self, name), stride=self.strides[i], padding=1))
            feats.append(h.mean(dim=(2, 3)))
        return torch.cat(feats, dim=1)


def generic_extractor(channels: int) -> nn.Module:
    """The download-free extractor for ``channels``-channel images (:class:`RandomFeatureCNN`).

    Built the same on every machine (seeded CPU generator). Its Frechet distances are only
    comparable with each other, not with Inception-based FID values.
    """
    return RandomFeatureCNN(channels).eval()


@dataclass
class Extracted:
    """Features (N, D) float32, class probabilities (N, K) or None, and the extractor's name."""

    features: Tensor
    probs: Tensor | None
    extractor: str


_CACHE: dict[tuple[str, int, int], FeatureNet] = {}


def _cached_classifier(dataset: str) -> FeatureNet:
    """:func:`load_classifier` memoised on the resolved file (path, mtime, size)."""
    path = shipped_classifier_path(dataset)
    if not path.is_file():
        path = user_classifier_path(dataset)
    if not path.is_file():
        return load_classifier(dataset)  # raises with the how-to message
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        _CACHE[key] = load_classifier(dataset, path=path)
    return _CACHE[key]


def extract(images_u8: Tensor, dataset: str | None, *, batch_size: int = 500) -> Extracted:
    """Features (and, for a dataset's classifier, softmax probabilities) of uint8 images.

    ``images_u8``: uint8 (N, C, H, W). ``dataset`` in :data:`CLASSIFIER_DATASETS`: that
    dataset's classifier (images must have its channels and size, else DatasetError naming
    both shapes; missing weights raise CheckpointError). None or any other name: the generic
    random-feature CNN (``probs`` None). Runs on the CPU in batches of ``batch_size``.
    """
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
        raise DatasetError(
            f"extract expects uint8 images (N, C, H, W), got {images_u8.dtype} "
            f"{tuple(images_u8.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, c, h, w = images_u8.shape
    net: nn.Module
    if dataset in CLASSIFIER_DATASETS:
        clf = _cached_classifier(dataset)
        if (c, h, w) != (clf.channels, *clf.image_size):
            raise DatasetError(
                f"the {dataset} classifier expects images (N, {clf.channels}, "
                f"{clf.image_size[0]}, {clf.image_size[1]}), got {tuple(images_u8.shape)}"
            )
        net, name = clf, f"{dataset} classifier"
        if clf.test_accuracy is not None:
            name += f" (test acc {clf.test_accuracy:.1%})"
    else:
        net, name = generic_extractor(c), GENERIC_EXTRACTOR_NAME
    clf_net = net if isinstance(net, FeatureNet) else None
    feats, probs = [], []
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            x = to_model_range(images_u8[i : i + batch_size].cpu())
            f = clf_net.features(x) if clf_net is not None else net(x)
            feats.append(f.float())
            if clf_net is not None:
                probs.append(torch.softmax(clf_net.head(f).float(), dim=1))
    dim = int(getattr(net, "feature_dim", 0))
    features = torch.cat(feats) if feats else torch.zeros(0, dim)
    if clf_net is None:
        return Extracted(features, None, name)
    k = clf_net.num_classes
    return Extracted(features, torch.cat(probs) if probs else torch.zeros(0, k), name)
