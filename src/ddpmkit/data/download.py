"""Download MNIST-like IDX files into the cache, verified by SHA-256, written atomically.

The base URL can be overridden (argument, or ``DDPMKIT_FASHION_MNIST_MIRROR`` /
``DDPMKIT_MNIST_MIRROR``), which is also how the tests serve files from a local HTTP server.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ddpmkit.data.idx import cache_dir
from ddpmkit.data.images import DatasetError

__all__ = ["SOURCES", "fetch", "fetch_dataset"]

# Published MD5s of the canonical .gz files (as in torchvision's dataset table). Debian's
# dataset-fashion-mnist recompressed the files (different .gz bytes, same content), so its copies
# do not match these; downloads are checked against them.
SOURCES: dict[str, dict[str, object]] = {
    "fashion_mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "env": "DDPMKIT_FASHION_MNIST_MIRROR",
        "files": {
            "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "env": "DDPMKIT_MNIST_MIRROR",
        "files": {
            "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
}


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _split(checksum: str) -> tuple[str, str]:
    """'md5:abc' -> ('md5', 'abc'); a bare hex digest is SHA-256."""
    algo, _, digest = checksum.rpartition(":")
    return (algo or "sha256"), digest.lower()


def fetch(url: str, dest: Path, checksum: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` via a temporary file; keep it only if the checksum matches.

    ``checksum`` is ``"md5:<hex>"``, ``"sha256:<hex>"`` or a bare SHA-256 hex digest.
    """
    algo, want = _split(checksum)
    if dest.is_file() and file_digest(dest, algo) == want:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except urllib.error.HTTPError as e:
            raise DatasetError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DatasetError(f"download of {url} failed: {getattr(e, 'reason', e)}") from None
        got = file_digest(tmp, algo)
        if got != want:
            raise DatasetError(
                f"download of {url} has {algo} {got[:12]}..., expected {want[:12]}...; not kept"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def fetch_dataset(
    name: str,
    base_url: str | None = None,
    dest: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Fetch the four IDX files of ``name`` into ``dest`` (default: the cache); returns dest."""
    if name not in SOURCES:
        raise DatasetError(f"nothing to fetch for {name!r}; expected one of {sorted(SOURCES)}")
    src = SOURCES[name]
    url = base_url or os.environ.get(str(src["env"])) or str(src["url"])
    folder = dest or cache_dir() / name
    files = src["files"]
    assert isinstance(files, dict)
    for fname, sha in files.items():
        log(f"fetching {url.rstrip('/')}/{fname}")
        fetch(f"{url.rstrip('/')}/{fname}", folder / fname, sha)
    return folder
