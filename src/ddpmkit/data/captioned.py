"""A user's folder of captioned images, in the two conventions people already use.

* **sidecar**: ``name.txt`` beside ``name.png`` (any extension of ``folder.EXTENSIONS``) holds
  the caption (the kohya / LoRA-trainer convention);
* **metadata.jsonl** (Hugging Face ImageFolder): one JSON object per line with ``file_name``
  (relative to the folder holding that metadata.jsonl) and ``text`` (the caption). Any number
  of metadata.jsonl files anywhere in the tree (e.g. one per split folder).

An image named by metadata.jsonl takes that caption (the first entry naming it wins), otherwise
its sidecar's. Captions are stripped with runs of whitespace (newlines too) made one space; an
empty caption is kept as ``""``, the null condition (see :mod:`ddpmkit.text`).

Bad input never stops a run mid-training: a caption file that is not UTF-8 (a BOM is allowed),
a metadata.jsonl line that is not UTF-8 or not valid JSON, an entry that is not an object with
string ``file_name`` and ``text``, an entry naming no image file, a repeated entry, and an image
without any caption are each skipped and counted, and one line ``captions under ROOT: skipped
...`` goes to ``log`` (unreadable images get :mod:`ddpmkit.data.folder`'s own line). Only a
folder with no captioned readable image at all is a :class:`DatasetError`.

Images are decoded, resized and given channels exactly as by
:func:`ddpmkit.data.folder.load_image_folder` (same scan: hidden files skipped, sorted).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ddpmkit.data.captions import CaptionedImages, _build
from ddpmkit.data.folder import _native_size, load_image_files, scan_image_files
from ddpmkit.data.images import as_image_size
from ddpmkit.errors import DatasetError

__all__ = ["METADATA_FILE", "load_captioned_folder", "read_captions"]

METADATA_FILE = "metadata.jsonl"


def _clean(text: str) -> str:
    return " ".join(text.split())


def _key(path: Path) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(path)))


class _Tally:
    """Counts of skipped input by kind, with the first example of each."""

    KINDS = {
        "not_utf8": "caption file{s} that {are} not UTF-8",
        "bad_json": "metadata.jsonl line{s} that {are} not valid JSON",
        "bad_entry": "metadata.jsonl entr{ies} without a string file_name and text",
        "no_image": "metadata.jsonl entr{ies} naming no image file",
        "repeated": "repeated metadata.jsonl entr{ies} (the first kept)",
        "uncaptioned": "image{s} without a caption (no name.txt, not in metadata.jsonl)",
    }

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def add(self, kind: str, where: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.first.setdefault(kind, where)

    def line(self, base: Path) -> str | None:
        parts = []
        for kind, text in self.KINDS.items():
            n = self.counts.get(kind, 0)
            if n:
                many = n != 1
                what = text.format(
                    s="s" if many else "", are="are" if many else "is", ies="ies" if many else "y"
                )
                parts.append(f"{n} {what} (first: {self.first[kind]})")
        return f"captions under {base}: skipped {'; '.join(parts)}" if parts else None


def _metadata_files(base: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if METADATA_FILE in filenames:
            found.append(Path(dirpath) / METADATA_FILE)
    return sorted(found)


def _read_metadata(meta: Path, tally: _Tally, out: dict[str, str]) -> None:
    try:
        raw = meta.read_bytes()
    except OSError as e:
        tally.add("bad_json", f"{meta}: {e.strerror or e}")
        return
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        where = f"{meta}:{lineno}"
        if not line.strip():
            continue
        try:
            entry = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            tally.add("bad_json", where)
            continue
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("file_name"), str)
            and isinstance(entry.get("text"), str)
        ):
            tally.add("bad_entry", where)
            continue
        key = _key(meta.parent / entry["file_name"])
        if key in out:
            tally.add("repeated", where)
            continue
        out[key] = _clean(entry["text"])


def read_captions(
    base: Path, files: list[Path], log: Callable[[str], None] = print
) -> dict[Path, str]:
    """Caption of each of ``files`` that has one (module docstring); logs the one line."""
    tally = _Tally()
    meta: dict[str, str] = {}
    for m in _metadata_files(base):
        _read_metadata(m, tally, meta)
    keys = {_key(p): p for p in files}
    for key in meta:
        if key not in keys:
            tally.add("no_image", os.path.relpath(key, _key(base)))
    captions: dict[Path, str] = {}
    for key, p in keys.items():
        if key in meta:
            captions[p] = meta[key]
            continue
        side = p.with_suffix(".txt")
        if not side.is_file():
            tally.add("uncaptioned", str(p))
            continue
        try:
            captions[p] = _clean(side.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError:
            tally.add("not_utf8", str(side))
        except OSError as e:
            tally.add("not_utf8", f"{side}: {e.strerror or e}")
    line = tally.line(base)
    if line:
        log(line)
    return captions


def load_captioned_folder(
    root: str | Path,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    *,
    max_images: int | None = None,
    log: Callable[[str], None] = print,
) -> CaptionedImages:
    """Every readable, captioned image under ``root`` as a :class:`CaptionedImages`.

    ``image_size`` S or (H, W), None = the images' common size; ``channels`` 1, 3 or None
    (infer), as for :func:`ddpmkit.data.folder.load_image_folder`. ``max_images`` keeps the
    first N captioned images in path order. ``garments`` is None (no classes).
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetError(f"captioned image folder {base} is not a folder; fix data.root")
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1, 3 or None (infer), got {channels!r}")
    files = scan_image_files(base)
    captions = read_captions(base, files, log)
    files = [p for p in files if p in captions]
    if max_images is not None:
        files = files[:max_images]
    if not files:
        raise DatasetError(
            f"no captioned image under {base}; put name.txt beside name.png or a "
            f"{METADATA_FILE} with file_name and text"
        )
    size = as_image_size(image_size) if image_size is not None else _native_size(files, base)
    images, kept = load_image_files(files, size, channels, base, log)
    texts = [captions[p] for p in kept]
    n, c = len(kept), int(images.shape[1])
    desc = f"captioned folder {base} ({n} images, {size[0]}x{size[1]}, {c} channel{'s' * (c > 1)})"
    return _build(images, texts, None, {}, [], desc)
