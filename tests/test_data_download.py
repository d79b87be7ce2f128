"""Checksummed downloads from a real HTTP server on localhost (no mocks): good and bad hashes,
404s, refused connections, the cache location, mirrors, and an end-to-end Fashion-MNIST
download of the Debian files served locally."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.data import DatasetError, load_dataset
from ddpmkit.data.download import SOURCES, cache_dir, fetch, fetch_dataset
from ddpmkit.data.idx import DEBIAN_FASHION_MNIST, read_idx


def idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                outer.requests.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    s = Server(root)
    yield s
    s.close()


@pytest.fixture
def payload(server: Server) -> bytes:
    data = gzip.compress(idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5)))
    (server.root / "f.gz").write_bytes(data)
    return data


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_fetch_with_the_right_hash(server: Server, payload: bytes, tmp_path: Path) -> None:
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache" / "sub" / "f.gz"
    assert fetch(server.url + "f.gz", dest, sha) == dest
    assert dest.read_bytes() == payload
    assert read_idx(dest).shape == (3, 4, 5)
    md5 = hashlib.md5(payload).hexdigest()
    assert fetch(server.url + "f.gz", tmp_path / "cache" / "g.gz", f"md5:{md5}").is_file()
    assert fetch(server.url + "f.gz", tmp_path / "cache" / "h.gz", f"sha256:{sha}").is_file()
    assert listing(tmp_path / "cache") == ["g.gz", "h.gz", "sub"]
    assert listing(tmp_path / "cache" / "sub") == ["f.gz"]  # no temporaries left


def test_existing_matching_file_is_not_downloaded_again(
    server: Server, payload: bytes, tmp_path: Path
) -> None:
    sha = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "f.gz"
    fetch(server.url + "f.gz", dest, sha)
    n = len(server.requests)
    fetch(server.url + "f.gz", dest, sha)
    assert len(server.requests) == n
    dest.write_bytes(b"stale")  # a damaged file is replaced
    fetch(server.url + "f.gz", dest, sha)
    assert dest.read_bytes() == payload and len(server.requests) == n + 1


def test_fetch_with_a_wrong_hash_keeps_nothing(
    server: Server, payload: bytes, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(DatasetError, match="does not match its checksum") as e:
        fetch(server.url + "f.gz", cache / "bad.gz", "0" * 64)
    assert "expected 0000000000000000" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DatasetError, match="not kept"):
        fetch(
            server.url + "f.gz", cache / "bad.gz", ["md5:" + "1" * 32, "gunzip+sha256:" + "2" * 64]
        )
    assert listing(cache) == []  # neither the file nor a temporary
    # A wrong download never replaces a file that is already there.
    (cache / "keep.gz").write_bytes(b"old")
    with pytest.raises(DatasetError):
        fetch(server.url + "f.gz", cache / "keep.gz", "0" * 64)
    assert listing(cache) == ["keep.gz"] and (cache / "keep.gz").read_bytes() == b"old"


def test_http_errors_and_unreachable_servers(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="HTTP 404"):
        fetch(server.url + "missing.gz", tmp_path / "m.gz", "0" * 64)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DatasetError, match="download of .* failed"):
        fetch(f"http://127.0.0.1:{port}/x.gz", tmp_path / "x.gz", "0" * 64, timeout=5)
    assert listing(tmp_path) == ["www"]
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        fetch(server.url + "missing.gz", tmp_path / "m.gz", "nohash:00")


def test_relative_destinations_go_to_the_cache(
    server: Server, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path / "ddpm-cache"))
    assert cache_dir() == tmp_path / "ddpm-cache"
    got = fetch(server.url + "f.gz", Path("x") / "f.gz", hashlib.sha256(payload).hexdigest())
    assert got == tmp_path / "ddpm-cache" / "x" / "f.gz" and got.read_bytes() == payload
    monkeypatch.delenv("DDPMKIT_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "ddpmkit"


def test_content_checksums_accept_recompressed_copies(server: Server, tmp_path: Path) -> None:
    raw = idx_bytes(np.arange(1000, dtype=np.uint8) % 7)
    (server.root / "a.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
    (server.root / "b.gz").write_bytes(gzip.compress(raw, compresslevel=9, mtime=123))
    content = "gunzip+sha256:" + hashlib.sha256(raw).hexdigest()
    for name in ("a.gz", "b.gz"):
        assert (
            gzip.decompress(fetch(server.url + name, tmp_path / name, content).read_bytes()) == raw
        )
    (server.root / "plain").write_bytes(raw)  # not gzip at all: rejected, not a crash
    with pytest.raises(DatasetError, match="not gzip data"):
        fetch(server.url + "plain", tmp_path / "plain", content)


def test_fetch_dataset_uses_the_mirror_variable_and_rejects_other_files(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for fname in SOURCES["mnist"].files:  # right names, wrong contents
        (server.root / fname).write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    monkeypatch.setenv("DDPMKIT_MNIST_MIRROR", server.url.rstrip("/"))
    logs: list[str] = []
    with pytest.raises(DatasetError, match="not kept"):
        fetch_dataset("mnist", dest=tmp_path / "mnist", log=logs.append)
    assert logs == [f"fetching {server.url}train-images-idx3-ubyte.gz"]
    assert listing(tmp_path / "mnist") == []
    with pytest.raises(DatasetError, match="nothing to fetch"):
        fetch_dataset("cifar10")


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed "
    "(apt-get install dataset-fashion-mnist); .ci/run installs it",
)
def test_download_enabled_fetches_fashion_mnist_from_a_mirror(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Serve the Debian files (byte-identical content to the canonical ones, recompressed
    # .gz); re-gzip the label files once more to exercise the content checksums.
    for src in DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"):
        if "labels" in src.name:
            data = gzip.compress(gzip.decompress(src.read_bytes()), compresslevel=1)
            (server.root / src.name).write_bytes(data)
        else:
            shutil.copy(src, server.root / src.name)
    monkeypatch.setenv("DDPMKIT_FASHION_MNIST_MIRROR", server.url)
    root = tmp_path / "fm"
    with pytest.raises(DatasetError, match="download enabled"):
        load_dataset("fashion_mnist", root=str(root), split="test")
    logs: list[str] = []
    d = load_dataset("fashion_mnist", root=str(root), split="test", download=True, log=logs.append)
    assert d.images.shape == (10000, 1, 28, 28) and len(logs) == 4
    assert listing(root) == sorted(SOURCES["fashion_mnist"].files)
    ref = load_dataset("fashion_mnist", split="test")  # from the Debian path
    assert torch.equal(d.images, ref.images) and d.labels is not None and ref.labels is not None
    assert torch.equal(d.labels, ref.labels)
    n = len(server.requests)
    load_dataset("fashion_mnist", root=str(root), download=True, log=logs.append)
    assert len(server.requests) == n  # everything was already there
