"""Image data core: pixel scaling, flips, fingerprints, IDX parsing, MNIST-like loading
(Fashion-MNIST from the Debian path), scikit-learn digits and the ``load_dataset`` registry."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.data import (
    DATASETS,
    DatasetError,
    ImageData,
    dataset_fingerprint,
    from_model_range,
    load_dataset,
    load_mnist_like,
    random_hflip,
    to_model_range,
)
from ddpmkit.data.idx import DEBIAN_FASHION_MNIST, read_idx

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C}


def idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, _CODES[arr.dtype], arr.ndim]) + b"".join(
        struct.pack(">I", d) for d in arr.shape
    )
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_split(
    folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool, sep: str = "-"
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, arr, nd in (("images", images, 3), ("labels", labels, 1)):
        data = idx_bytes(arr)
        name = f"{prefix}-{kind}{sep}idx{nd}-ubyte"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def tiny_set(n: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n, dtype=np.uint8),
    )


# ----------------------------------------------------------------------------- pixels


def test_pixel_scaling_round_trip_is_exact_for_all_256_values() -> None:
    u8 = torch.arange(256, dtype=torch.uint8)
    x = to_model_range(u8)
    assert x.dtype == torch.float32
    assert float(x[0]) == -1.0 and float(x[255]) == 1.0
    assert bool((x[1:] > x[:-1]).all())
    assert torch.equal(from_model_range(x), u8)
    # float64 input (e.g. from numpy) gives the same bytes.
    assert torch.equal(from_model_range(x.double()), u8)


def test_from_model_range_clamps_rounds_and_handles_nan() -> None:
    x = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0, float("nan")])
    assert from_model_range(x).tolist() == [0, 0, 128, 255, 255, 255, 128]
    assert from_model_range(torch.tensor([-1 + 0.6 / 127.5])).item() == 1  # rounds, not floors


def test_to_model_range_rejects_non_uint8() -> None:
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(torch.zeros(3))


def test_random_hflip_is_per_sample_and_seeded() -> None:
    base = torch.arange(1 * 2 * 3, dtype=torch.float32).reshape(1, 1, 2, 3)
    x = base.repeat(200, 1, 1, 1)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = (out == base.flip(-1)).flatten(1).all(1)
    same = (out == base).flatten(1).all(1)
    assert bool((flipped ^ same).all())  # every sample is either flipped or untouched
    assert 60 < int(flipped.sum()) < 140
    again = random_hflip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert random_hflip(x.to(torch.uint8)).dtype == torch.uint8  # works on raw pixels too


def test_dataset_fingerprint_sees_pixels_order_and_labels() -> None:
    imgs = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator())
    labs = torch.tensor([0, 1, 2, 0, 1, 2])
    d = ImageData(imgs, labs, ["a", "b", "c"])
    fp = dataset_fingerprint(d)
    assert len(fp) == 64 and fp == dataset_fingerprint(
        ImageData(imgs.clone(), labs.clone(), ["a", "b", "c"])
    )
    changed = imgs.clone()
    changed[3, 0, 1, 1] ^= 1
    assert dataset_fingerprint(ImageData(changed, labs, ["a", "b", "c"])) != fp
    assert dataset_fingerprint(ImageData(imgs, labs.flip(0), ["a", "b", "c"])) != fp
    assert dataset_fingerprint(ImageData(imgs, None)) != fp
    assert dataset_fingerprint(ImageData(imgs.reshape(6, 1, 2, 8), labs, ["a", "b", "c"])) != fp


def test_image_data_validates_and_describes() -> None:
    d = ImageData(torch.zeros(2, 3, 4, 5, dtype=torch.uint8), torch.tensor([0, 1]), ["x", "y"])
    assert len(d) == 2 and d.num_classes == 2 and d.channels == 3 and d.image_size == (4, 5)
    assert ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), None).num_classes == 0
    with pytest.raises(ValueError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), None)
    with pytest.raises(ValueError, match="int64"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="one class name per label"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ["a", "b"])


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip_any_dtype(tmp_path: Path, gz: bool) -> None:
    for arr in (
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-70000, 3, 2**31 - 1], dtype=np.int32),
        np.array([[-2, 300]], dtype=np.int16),
    ):
        data = idx_bytes(arr)
        p = tmp_path / "f.bin"  # no extension: gzip is sniffed from the bytes
        p.write_bytes(gzip.compress(data) if gz else data)
        got = read_idx(p)
        assert got.dtype == arr.dtype and got.dtype.isnative and np.array_equal(got, arr)


def test_read_idx_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DatasetError, match="bad magic number"):
        read_idx(bad)
    gz_bad = tmp_path / "bad.gz"
    gz_bad.write_bytes(gzip.compress(b"\x00\x00\x99\x01\x00\x00\x00\x01x"))  # unknown type code
    with pytest.raises(DatasetError, match="bad magic number"):
        read_idx(gz_bad)
    good = idx_bytes(np.zeros((3, 4), np.uint8))
    (tmp_path / "short").write_bytes(good[:-2])
    with pytest.raises(DatasetError, match="truncated IDX file"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(good + b"xx")
    with pytest.raises(DatasetError, match="oversized IDX file"):
        read_idx(tmp_path / "long")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(DatasetError, match="corrupt gzip"):
        read_idx(tmp_path / "broken.gz")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "empty")
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(tmp_path / "missing")


@pytest.mark.parametrize(
    "layout", ["gz", "raw", "kaggle_names", "raw_subfolder", "torchvision_subfolder"]
)
def test_load_mnist_like_layouts(tmp_path: Path, layout: str) -> None:
    images, labels = tiny_set()
    test_images, test_labels = tiny_set(3, seed=1)
    folder = {
        "raw_subfolder": tmp_path / "raw",
        "torchvision_subfolder": tmp_path / "MNIST" / "raw",
    }.get(layout, tmp_path)
    gz = layout != "raw"
    sep = "." if layout == "kaggle_names" else "-"
    write_split(folder, "train", images, labels, gz, sep)
    write_split(folder, "t10k", test_images, test_labels, gz, sep)
    d = load_mnist_like("mnist", tmp_path, "train")
    assert d.images.shape == (7, 1, 28, 28) and d.images.dtype == torch.uint8
    assert np.array_equal(d.images[:, 0].numpy(), images)
    assert d.labels is not None and d.labels.dtype == torch.int64
    assert np.array_equal(d.labels.numpy(), labels.astype(np.int64))
    assert d.class_names == [str(i) for i in range(10)] and d.num_classes == 10
    t = load_mnist_like("mnist", str(tmp_path), "test")
    assert np.array_equal(t.images[:, 0].numpy(), test_images)


def test_load_mnist_like_rejects_mismatched_or_bad_labels(tmp_path: Path) -> None:
    images, labels = tiny_set()
    write_split(tmp_path, "train", images, labels[:5], gz=True)
    with pytest.raises(DatasetError, match="do not match"):
        load_mnist_like("fashion_mnist", tmp_path)
    write_split(tmp_path, "train", images, labels + 10, gz=True)
    with pytest.raises(DatasetError, match=r"labels outside 0\.\.9"):
        load_mnist_like("fashion_mnist", tmp_path)


def test_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as e:
        load_mnist_like("fashion_mnist", tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg and "train-images-idx3-ubyte[.gz]" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "download enabled" in msg and "ddpm fetch fashion_mnist" in msg and "data.root" in msg
    with pytest.raises(DatasetError) as e:
        load_mnist_like("mnist", tmp_path, "test")
    assert "apt-get" not in str(e.value) and "t10k-images-idx3-ubyte" in str(e.value)
    with pytest.raises(DatasetError, match="expected 'train' or 'test'"):
        load_mnist_like("mnist", tmp_path, "validation")
    with pytest.raises(DatasetError, match="unknown IDX dataset"):
        load_mnist_like("kmnist", tmp_path)


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed "
    "(apt-get install dataset-fashion-mnist); .ci/run installs it",
)
def test_fashion_mnist_from_the_debian_path() -> None:
    train = load_dataset("fashion_mnist")
    test = load_mnist_like("fashion_mnist", split="test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    for d in (train, test):
        assert d.labels is not None and d.labels.dtype == torch.int64
        assert int(d.labels.min()) == 0 and int(d.labels.max()) == 9
    assert train.labels is not None and test.labels is not None
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # the published class balance
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert str(DEBIAN_FASHION_MNIST) in train.source


# ----------------------------------------------------------------------------- digits, registry


def test_digits() -> None:
    d = load_dataset("digits")
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.uint8
    assert int(d.images.max()) == 255 and int(d.images.min()) == 0
    assert d.labels is not None and sorted(d.labels.unique().tolist()) == list(range(10))
    assert d.class_names == [str(i) for i in range(10)]
    r = load_dataset("digits", image_size=(16, 12), channels=3)
    assert r.images.shape == (1797, 3, 16, 12)
    assert torch.equal(r.images[:, 0], r.images[:, 2])  # gray replicated


def test_registry_resizes_mnist_like_and_validates(tmp_path: Path) -> None:
    images, labels = tiny_set()
    write_split(tmp_path, "train", images, labels, gz=True)
    d = load_dataset("mnist", root=str(tmp_path), image_size=32, channels=3)
    assert d.images.shape == (7, 3, 32, 32) and "resized from 28x28 to 32x32" in d.source
    flat = np.zeros((1, 28, 28), np.uint8) + 77
    write_split(tmp_path / "flat", "train", flat, np.zeros(1, np.uint8), gz=False)
    f = load_dataset("mnist", root=tmp_path / "flat", image_size=(20, 40))
    assert f.images.shape == (1, 1, 20, 40) and bool((f.images == 77).all())
    native = load_dataset("mnist", root=tmp_path, image_size=28)
    assert np.array_equal(native.images[:, 0].numpy(), images)

    assert DATASETS == (
        "fashion_mnist", "mnist", "digits", "folder", "fashion_captions", "fashion_scenes"
    )  # fmt: skip
    with pytest.raises(
        DatasetError, match="fashion_mnist, mnist, digits, folder, fashion_captions"
    ):
        load_dataset("cifar10")
    with pytest.raises(DatasetError, match="data.root"):
        load_dataset("folder", image_size=8)
    with pytest.raises(DatasetError, match="image size"):
        load_dataset("digits", image_size=0)
    with pytest.raises(DatasetError, match="image size"):
        load_dataset("digits", image_size=(8, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="channels"):
        load_dataset("digits", channels=2)
    with pytest.raises(DatasetError, match="split"):
        load_dataset("digits", split="val")
