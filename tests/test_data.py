"""Image data: IDX files, Fashion-MNIST from the Debian path, folders of images in every mode,
pixel scaling, and checksummed downloads from a real local HTTP server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.data import DatasetError, from_model_range, load_dataset, random_hflip, to_model_range
from ddpmkit.data.download import fetch, fetch_dataset
from ddpmkit.data.folder import load_image_folder
from ddpmkit.data.idx import load_mnist_like, read_idx

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_mnist_like(folder: Path, n: int, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for pre in ("train", "t10k"):
        for stem, arr in (
            (f"{pre}-images-idx3-ubyte", images),
            (f"{pre}-labels-idx1-ubyte", labels),
        ):
            data = idx_bytes(arr)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    images, labels = write_mnist_like(tmp_path, 7, gz)
    d = load_mnist_like("mnist", tmp_path, "train")
    assert d.images.shape == (7, 1, 28, 28) and d.images.dtype == torch.uint8
    assert np.array_equal(d.images[:, 0].numpy(), images)
    assert np.array_equal(d.labels.numpy(), labels.astype(np.int64))
    assert d.class_names[3] == "3"


def test_idx_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DatasetError, match="bad magic number"):
        read_idx(bad)
    trunc = tmp_path / "t"
    trunc.write_bytes(idx_bytes(np.zeros((3, 4), np.uint8))[:-2])
    with pytest.raises(DatasetError, match="truncated IDX file"):
        read_idx(trunc)
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist") as e:
        load_mnist_like("fashion_mnist", tmp_path / "empty")
    assert "ddpm fetch fashion_mnist" in str(e.value)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_path() -> None:
    train = load_dataset("fashion_mnist")
    test = load_dataset("fashion_mnist", split="test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert set(train.labels.unique().tolist()) == set(range(10))
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # the published class balance
    assert train.class_names[9] == "Ankle boot"


def test_digits_and_resize() -> None:
    d = load_dataset("digits")
    assert d.images.shape == (1797, 1, 8, 8) and int(d.images.max()) == 255
    r = load_dataset("digits", image_size=16, channels=3)
    assert r.images.shape == (1797, 3, 16, 16)


def test_pixel_scaling_round_trip_is_exact() -> None:
    u8 = torch.arange(256, dtype=torch.uint8)
    x = to_model_range(u8)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(from_model_range(x), u8)
    assert torch.equal(
        from_model_range(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8)
    )


def test_random_hflip() -> None:
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
    g = torch.Generator().manual_seed(0)
    out = random_hflip(x.repeat(50, 1, 1, 1), g)
    flipped = (out == x.flip(-1).repeat(50, 1, 1, 1)).flatten(1).all(1)
    same = (out == x.repeat(50, 1, 1, 1)).flatten(1).all(1)
    assert bool((flipped | same).all()) and 20 < int(flipped.sum()) < 80


def make_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    (root / "cats" / "deep").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.fromarray(rgb).save(root / "cats" / "a.png")
    Image.fromarray(rgb).save(root / "cats" / "b.jpg", quality=90)
    Image.fromarray(rgb).save(root / "cats" / "deep" / "c.webp")
    Image.fromarray(rgb).convert("RGBA").save(root / "dogs" / "d.png")
    Image.fromarray(rgb).convert("P").save(root / "dogs" / "e.gif")
    Image.fromarray(rgb[:, :, 0]).convert("LA").save(root / "dogs" / "f.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "dogs" / "g.tif")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(root / "dogs" / "h16.png")
    Image.fromarray(rgb).save(root / "dogs" / "i.bmp")
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "dogs" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dogs" / "notes.txt").write_text("not an image, not counted")


def test_image_folder_all_modes(tmp_path: Path) -> None:
    make_folder(tmp_path)
    logs: list[str] = []
    d = load_image_folder(tmp_path, 16, class_subfolders=True, log=logs.append)
    assert d.images.shape == (9, 3, 16, 16) and d.images.dtype == torch.uint8
    assert d.class_names == ["cats", "dogs"]
    assert d.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert len(logs) == 1 and logs[0].startswith("skipped 2 unreadable files")
    # Non-square target, forced grayscale: 1-channel data stays 1-channel.
    g = load_image_folder(tmp_path, (8, 12), channels=1, log=lambda s: None)
    assert g.images.shape == (9, 1, 8, 12)


def test_grayscale_folder_stays_one_channel(tmp_path: Path) -> None:
    for i in range(3):
        Image.fromarray(np.full((10, 10), 30 * i, np.uint8)).save(tmp_path / f"{i}.png")
    d = load_image_folder(tmp_path, 8)
    assert d.images.shape == (3, 1, 8, 8)
    assert d.images[2].float().mean().item() == pytest.approx(60, abs=1)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 8)
    with pytest.raises(DatasetError, match="no image files"):
        load_image_folder(tmp_path, 8)
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="none of the 1 image files"):
        load_image_folder(tmp_path, 8, log=lambda s: None)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    httpd.shutdown()


def test_download_checks_the_checksum(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    payload = gzip.compress(idx_bytes(np.arange(10, dtype=np.uint8)))
    (root / "f.gz").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache" / "f.gz"
    assert fetch(url + "f.gz", dest, sha) == dest
    assert dest.read_bytes() == payload
    md5 = hashlib.md5(payload).hexdigest()
    assert fetch(url + "f.gz", tmp_path / "cache" / "g.gz", f"md5:{md5}").is_file()
    bad = tmp_path / "cache" / "bad.gz"
    with pytest.raises(DatasetError, match="expected 000000000000"):
        fetch(url + "f.gz", bad, "0" * 64)
    assert not bad.exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "f.gz",
        "g.gz",
    ]  # no temporaries
    with pytest.raises(DatasetError, match="404"):
        fetch(url + "missing.gz", tmp_path / "cache" / "m.gz", sha)


def test_fetch_dataset_rejects_files_that_are_not_canonical(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = server
    write_mnist_like(root, 3, gz=True)  # right names, wrong contents
    with pytest.raises(DatasetError, match="not kept"):
        fetch_dataset("mnist", base_url=url, dest=tmp_path / "mnist", log=lambda s: None)
    assert not any((tmp_path / "mnist").iterdir())
