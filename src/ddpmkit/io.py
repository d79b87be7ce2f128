"""Files: the one atomic writer, the JSON-object reader, SHA-256 of a file, the cache folder.

Every file ddpmkit writes goes through :func:`atomic_write` (or its stream, bytes and text
forms): the bytes go to a temporary file in the destination's folder (``.<name>.tmp-XXXX<suffix>``,
so loaders and ``checkpoint.is_temporary`` recognise it), which is fsynced, renamed onto the
destination with ``os.replace``, and the folder is fsynced so the rename survives a crash. A
reader sees the old file or the new one, never a partial one; if the write fails the temporary
file is removed and the old file is left untouched.

The cache folder (:func:`cache_dir`) is ``$DDPMKIT_CACHE`` when it is set and not empty (``~``
expanded), else ``~/.cache/ddpmkit``. Downloads, classifier weights, reference statistics and
the fused GroupNorm build all live below it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CACHE_ENV",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_stream",
    "atomic_write_text",
    "cache_dir",
    "file_sha256",
    "fsync_dir",
    "read_json_object",
]

CACHE_ENV = "DDPMKIT_CACHE"
_CHUNK = 1 << 20
PathLike = str | os.PathLike[str]


def cache_dir() -> Path:
    """``$DDPMKIT_CACHE`` if set and non-empty (with ``~`` expanded), else ``~/.cache/ddpmkit``."""
    env = os.environ.get(CACHE_ENV, "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddpmkit"


def fsync_dir(path: PathLike) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@functools.cache
def _umask() -> int:
    """The process umask (read once; os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(
    path: PathLike, write: Callable[[Path], object], *, mode: int | None = None
) -> Path:
    """Call ``write(tmp)`` to fill a temporary file next to ``path``, then move it onto ``path``.

    For writers that need a file name (``safetensors.save_file``, ``np.savez``): ``tmp`` has the
    same suffix as ``path``. The parent folder is created if needed. The file gets ``mode``
    (default: the usual ``0o666`` minus the umask), is fsynced, renamed with ``os.replace``, and
    the folder is fsynced. If anything raises, the temporary file is removed and ``path`` is left
    as it was. Returns ``path`` as a Path.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.tmp-", suffix=dest.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)  # mkstemp makes 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(dest.parent)
    return dest


def atomic_write_stream(path: PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """:func:`atomic_write` for writers that take an open binary file (Pillow, matplotlib)."""

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return atomic_write(path, fill)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def read_json_object(
    path: PathLike, error: type[ValueError] = ValueError, missing: str = "check the path"
) -> dict[str, Any]:
    """The JSON object in file ``path``; else ``error`` with a one-line message naming the file.

    A missing file says ``"<path>: missing; <missing>"`` (``missing`` is the fix to suggest);
    a file that cannot be read or is not valid JSON says so with the parser's reason; valid JSON
    that is not an object says what it is instead.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: missing; {missing}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        kind = _JSON_KINDS.get(type(data), "a number")
        raise error(f"{path}: expected a JSON object, found {kind}")
    return data
