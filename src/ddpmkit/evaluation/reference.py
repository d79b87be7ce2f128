"""Reference statistics (features, mean, covariance of a real image set), cached on disk.

Extracting features of 10,000-60,000 reference images is the slow part of an evaluation, so the
result is cached. The cache key is a SHA-256 over

* the dataset fingerprint (:func:`ddpmkit.data.images.dataset_fingerprint`: shape, every pixel
  and label of the exact image set used), so a changed, resized, reordered or subsampled
  dataset never reuses stale statistics, and
* the extractor's identity (:func:`extractor_identity`: its name and a hash of its features on
  a fixed probe batch), so retrained classifier weights never reuse them either.

Layout: ``<cache>/<key>.safetensors`` (``features`` float32 (N, D), ``mu`` float64 (D,),
``cov`` float64 (D, D)) and ``<key>.json`` (what the entry is: dataset description, size,
fingerprint, extractor, the SHA-256 of the tensor file). Both are written atomically
(:func:`ddpmkit.io.atomic_write`), the tensor file first and the JSON last, so
an entry without its JSON is incomplete and ignored; an entry whose JSON or tensor file does not
match (other fingerprint, truncated or corrupt file) is a miss and is recomputed. The default
folder is ``ref_stats`` in :func:`ddpmkit.io.cache_dir` (``~/.cache/ddpmkit/ref_stats``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddpmkit.evaluation.metrics import feature_statistics
from ddpmkit.io import atomic_write, atomic_write_text, cache_dir, file_sha256, read_json_object

__all__ = [
    "CACHE_FORMAT",
    "RefStats",
    "cache_key",
    "default_cache_dir",
    "extractor_identity",
    "load_cached",
    "reference_statistics",
    "save_cached",
]

CACHE_FORMAT = 1
PROBE_SEED = 20240601  # the fixed probe batch that identifies an extractor
PROBE_SIZE = 4

FeatureFn = Callable[[Tensor], Tensor]  # uint8 (N, C, H, W) -> features (N, D)


@dataclass
class RefStats:
    """Features (N, D) float32 of a reference set, with their mean (D,) and covariance (D, D)."""

    features: Tensor
    mu: Tensor
    cov: Tensor
    info: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.features.shape[0])


def default_cache_dir() -> Path:
    """``$DDPMKIT_CACHE/ref_stats``, default ``~/.cache/ddpmkit/ref_stats``."""
    return cache_dir() / "ref_stats"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extractor_identity(name: str, features_of: FeatureFn, image_shape: tuple[int, ...]) -> str:
    """``name`` plus a hash of the extractor's features on a fixed probe batch.

    The probe is ``PROBE_SIZE`` uint8 images of ``image_shape`` (C, H, W) from a seeded CPU
    generator; features are rounded to 4 decimals before hashing. Any change of the extractor's
    weights changes the hash, so cached statistics of an old extractor are never reused.
    """
    gen = torch.Generator().manual_seed(PROBE_SEED)
    probe = torch.randint(0, 256, (PROBE_SIZE, *image_shape), generator=gen, dtype=torch.uint8)
    f = features_of(probe).detach().double().cpu()
    rounded = torch.round(f * 1e4).to(torch.int64).numpy().tobytes()
    return f"{name} [probe {_sha256_bytes(rounded)[:16]}]"


def cache_key(fingerprint: str, extractor_id: str) -> str:
    """The cache entry name: SHA-256 over the format version, dataset fingerprint, extractor."""
    blob = json.dumps(
        {"format": CACHE_FORMAT, "fingerprint": fingerprint, "extractor": extractor_id},
        sort_keys=True,
    )
    return _sha256_bytes(blob.encode())[:32]


def save_cached(folder: Path, key: str, stats: RefStats) -> Path:
    """Write ``stats`` as entry ``key`` of ``folder`` (tensors first, JSON last, atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "features": stats.features.detach().float().cpu().contiguous(),
        "mu": stats.mu.detach().double().cpu().contiguous(),
        "cov": stats.cov.detach().double().cpu().contiguous(),
    }
    st_path = folder / f"{key}.safetensors"
    atomic_write(st_path, lambda p: save_file(tensors, str(p)))
    info = {**stats.info, "format": CACHE_FORMAT, "sha256": file_sha256(st_path)}
    atomic_write_text(folder / f"{key}.json", json.dumps(info, indent=1, sort_keys=True))
    return st_path


def load_cached(folder: Path, key: str, expect: dict[str, Any]) -> RefStats | None:
    """Entry ``key`` of ``folder`` if complete, intact and matching ``expect``; else None.

    ``expect`` holds JSON fields that must be equal (fingerprint, extractor, size).
    """
    js, st = folder / f"{key}.json", folder / f"{key}.safetensors"
    if not js.is_file() or not st.is_file():
        return None
    try:
        info = read_json_object(js)
    except ValueError:  # unreadable, not JSON or not an object: a miss
        return None
    try:
        if info.get("format") != CACHE_FORMAT:
            return None
        if any(info.get(k) != v for k, v in expect.items()):
            return None
        if file_sha256(st) != info.get("sha256"):
            return None
        t = load_file(str(st))
        feats, mu, cov = t["features"], t["mu"], t["cov"]
    except (OSError, SafetensorError, KeyError):
        return None
    d = int(mu.shape[0]) if mu.ndim == 1 else -1
    if feats.ndim != 2 or feats.shape[1] != d or tuple(cov.shape) != (d, d):
        return None
    return RefStats(feats, mu, cov, info)


def reference_statistics(
    images_u8: Tensor,
    *,
    fingerprint: str,
    extractor_id: str,
    features_of: FeatureFn,
    folder: Path | None,
    description: str,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[RefStats, Literal["hit", "miss", "off"], str]:
    """Features, mean and covariance of ``images_u8`` (uint8 (N, C, H, W)), through the cache.

    ``fingerprint`` must be the :func:`~ddpmkit.data.images.dataset_fingerprint` of exactly
    these images; ``extractor_id`` comes from :func:`extractor_identity`. ``folder`` None
    disables the cache ("off"). Returns (statistics, "hit" | "miss" | "off", cache key).
    """
    key = cache_key(fingerprint, extractor_id)
    n = int(images_u8.shape[0])
    expect = {"fingerprint": fingerprint, "extractor": extractor_id, "size": n}
    if folder is not None:
        cached = load_cached(folder, key, expect)
        if cached is not None:
            return cached, "hit", key
    log(f"extracting features of {n} images ({description})")
    feats = features_of(images_u8).detach().float().cpu()
    mu, cov = feature_statistics(feats)
    info = {
        **expect,
        "description": description,
        "image_shape": list(images_u8.shape[1:]),
        "feature_dim": int(feats.shape[1]),
    }
    stats = RefStats(feats, mu, cov, info)
    if folder is None:
        return stats, "off", key
    try:
        save_cached(folder, key, stats)
    except OSError as e:  # a read-only or full cache must not fail the evaluation
        log(f"could not write reference statistics to {folder} ({e}); continuing without cache")
    return stats, "miss", key
