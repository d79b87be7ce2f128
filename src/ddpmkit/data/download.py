"""Checksummed downloads of the MNIST-like IDX files into the cache, written atomically.

:func:`fetch` streams a URL into a temporary file in the destination folder, checks it against
one or more checksums and only then renames it into place (:func:`ddpmkit.io.atomic_write`), so
an interrupted or corrupt download never leaves a file under the final name. The cache is
:func:`ddpmkit.io.cache_dir`: ``$DDPMKIT_CACHE`` if set and not empty, else ``~/.cache/ddpmkit``.

Checksums are strings ``"<algo>:<hex>"`` (any :mod:`hashlib` algorithm, e.g. ``sha256``, ``md5``),
a bare hex digest (SHA-256), or ``"gunzip+<algo>:<hex>"``, a digest of the file's
gzip-*decompressed* bytes. A file passes if it matches *any* checksum listed for it.

Why content digests: the canonical Fashion-MNIST ``.gz`` files have published MD5s (used below),
but Debian's ``dataset-fashion-mnist`` package ships recompressed copies: different ``.gz`` bytes
(so different digests), byte-identical contents. Their decompressed MD5s equal the published MD5s
of the uncompressed canonical files (f4a8712d..., 9018921c..., 8181f547..., 15d48437...), so the
SHA-256 of the decompressed bytes below, computed from the Debian files, identifies the canonical
data too. A download from the canonical URL matches the published MD5; a copy of the Debian files
served by a mirror matches the content digest (and the Debian ``.gz`` SHA-256, also listed).
For MNIST the published MD5s of the ``.gz`` files and of the decompressed files are used.

The base URL can be overridden by argument or by ``DDPMKIT_FASHION_MNIST_MIRROR`` /
``DDPMKIT_MNIST_MIRROR`` (also how the tests serve files from a local HTTP server).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ddpmkit.errors import DatasetError
from ddpmkit.io import atomic_write, cache_dir

__all__ = ["SOURCES", "Source", "cache_dir", "fetch", "fetch_dataset", "file_digest"]


@dataclass(frozen=True)
class Source:
    """Where a dataset's files live: default base URL, mirror variable, checksums per file."""

    url: str
    env: str
    files: dict[str, tuple[str, ...]]


SOURCES: dict[str, Source] = {
    "fashion_mnist": Source(
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        env="DDPMKIT_FASHION_MNIST_MIRROR",
        files={
            "train-images-idx3-ubyte.gz": (
                "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "sha256:b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
                "gunzip+sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            "train-labels-idx1-ubyte.gz": (
                "md5:25c81989df183df01b3e8a0aad5dffbe",
                "sha256:0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
                "gunzip+sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            "t10k-images-idx3-ubyte.gz": (
                "md5:bef4ecab320f06d8554ea6380940ec79",
                "sha256:cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
                "gunzip+sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "md5:bb300cfdad3c16e7a12a480ee83cd310",
                "sha256:8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
                "gunzip+sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        },
    ),
    "mnist": Source(
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        env="DDPMKIT_MNIST_MIRROR",
        files={
            "train-images-idx3-ubyte.gz": (
                "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "gunzip+md5:6bbc9ace898e44ae57da46a324031adb",
            ),
            "train-labels-idx1-ubyte.gz": (
                "md5:d53e105ee54ea40749a09fcbcd1e9432",
                "gunzip+md5:a25bea736e30d166cdddb491f175f624",
            ),
            "t10k-images-idx3-ubyte.gz": (
                "md5:9fb629c4189551a2d022fa330f9573f3",
                "gunzip+md5:2646ac647ad5339dbf082846283269ea",
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "md5:ec29112dd5afa0611ce80d1b7f02629c",
                "gunzip+md5:27ae3e4e09519cfbb04c329615203637",
            ),
        },
    ),
}

_CHUNK = 1 << 20


def _parse(checksum: str) -> tuple[bool, str, str]:
    """``'gunzip+md5:ab'`` -> (True, 'md5', 'ab'); a bare hex digest is SHA-256 of the bytes."""
    spec, _, digest = checksum.strip().rpartition(":")
    gunzip = spec.startswith("gunzip+")
    algo = (spec.removeprefix("gunzip+") or "sha256").lower()
    if algo not in hashlib.algorithms_available:
        raise ValueError(f"unknown hash algorithm {algo!r} in checksum {checksum!r}")
    return gunzip, algo, digest.lower()


def file_digest(path: Path, algo: str = "sha256", gunzip: bool = False) -> str:
    """Hex digest of a file's bytes (or of its gzip-decompressed bytes), read in chunks."""
    h = hashlib.new(algo)
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _matches(path: Path, checksums: Sequence[str]) -> tuple[bool, str]:
    """(ok, description of the first checksum's actual value) for a downloaded file."""
    first = ""
    for c in checksums:
        gunzip, algo, want = _parse(c)
        try:
            got = file_digest(path, algo, gunzip)
        except (OSError, EOFError, zlib.error):
            got = "(not gzip data)"
        if got == want:
            return True, ""
        if not first:
            first = f"{'gunzip+' if gunzip else ''}{algo} {got[:16]}, expected {want[:16]}"
    return False, first


def fetch(
    url: str,
    dest: str | Path,
    checksum: str | Sequence[str],
    *,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` and keep it only if it matches a checksum; returns the path.

    A relative ``dest`` is taken inside :func:`cache_dir`. An existing ``dest`` that already
    matches is kept without downloading. The bytes go to a temporary file in ``dest``'s folder,
    which is checked and then atomically renamed; on a mismatch or any error the temporary file
    is deleted and :class:`DatasetError` is raised (an existing ``dest`` is left untouched).
    """
    sums = [checksum] if isinstance(checksum, str) else list(checksum)
    if not sums:
        raise ValueError("fetch needs at least one checksum")
    for c in sums:
        _parse(c)  # reject a malformed table entry before touching the network
    dest = Path(dest).expanduser()
    if not dest.is_absolute():
        dest = cache_dir() / dest
    if dest.is_file() and _matches(dest, sums)[0]:
        return dest

    def download(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            try:
                req = urllib.request.Request(url, headers={"User-Agent": "ddpmkit"})
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    while chunk := r.read(_CHUNK):
                        f.write(chunk)
            except urllib.error.HTTPError as e:
                raise DatasetError(
                    f"download of {url} failed: HTTP {e.code} {e.reason}; check the URL or mirror"
                ) from None
            except (urllib.error.URLError, OSError, ValueError) as e:
                why = getattr(e, "reason", None) or e
                raise DatasetError(
                    f"download of {url} failed: {why}; check the network, or use a mirror"
                ) from None
        ok, why = _matches(tmp, sums)
        if not ok:
            raise DatasetError(
                f"download of {url} does not match its checksum ({why}); not kept. The server "
                "may serve a different or damaged file: retry, or use another mirror"
            )

    try:
        atomic_write(dest, download)
    except OSError as e:  # the folder cannot be created or written (download errors are above)
        raise DatasetError(
            f"cannot write into {dest.parent} ({e.strerror}); set DDPMKIT_CACHE or data.root "
            "to a writable folder"
        ) from None
    return dest


def fetch_dataset(
    name: str,
    base_url: str | None = None,
    dest: str | Path | None = None,
    log: Callable[[str], None] = print,
    *,
    timeout: float = 60.0,
) -> Path:
    """Fetch the four IDX files of ``name`` into ``dest`` (default ``cache_dir()/name``).

    The base URL is ``base_url``, else the dataset's mirror variable, else the canonical URL.
    Files already present and matching are not downloaded again. Returns the folder.
    """
    if name not in SOURCES:
        raise DatasetError(f"nothing to fetch for {name!r}; expected one of {sorted(SOURCES)}")
    src = SOURCES[name]
    base = (base_url or os.environ.get(src.env) or src.url).rstrip("/") + "/"
    folder = Path(dest).expanduser().absolute() if dest is not None else cache_dir() / name
    for fname, sums in src.files.items():
        target = folder / fname
        if target.is_file() and _matches(target, sums)[0]:
            continue
        log(f"fetching {base}{fname}")
        fetch(base + fname, target, sums, timeout=timeout)
    return folder
