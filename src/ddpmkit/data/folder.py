"""A folder of images of any size and mode -> an in-memory uint8 dataset at the training size.

Scan: recursive (symlinked folders followed once), files with the extensions in ``EXTENSIONS``
(case-insensitive; GIF and multi-frame files give their first frame), sorted by path for
determinism. Hidden files and folders (name starting with ``.``, e.g. macOS ``._x.jpg``) are
ignored, as are other extensions (a ``notes.txt`` is neither loaded nor counted).

Each image is turned upright (EXIF orientation), then brought to 8-bit grayscale ('L') or RGB:

* transparency (RGBA, LA, PA, palette images with a transparent colour) is composited onto
  white;
* 16-bit grayscale ('I;16*') is scaled by 255/65535; 32-bit 'I' likewise when its maximum is
  above 255, else taken as 8-bit; float 'F' is taken as [0, 1] when its maximum is <= 1, else
  as [0, 255];
* CMYK, YCbCr and other colour modes are converted to RGB by Pillow.

It is then scaled so it covers (H, W) and centre-cropped (bicubic, antialiased; see
:func:`ddpmkit.data.images.resize_center_crop`). Large JPEGs are decoded at a reduced DCT scale
(Pillow's draft mode) that still leaves at least twice the needed resolution, which makes
folders of camera photos load several times faster.

Channels: ``channels=None`` gives 1 if every image is grayscale by mode ('1', 'L', 'LA', 'I',
'I;16', 'F', or a palette image whose colours are all gray) and 3 otherwise (gray images are
then replicated to RGB); ``channels=1`` converts colour to luminance (ITU-R 601-2).

Unreadable files (corrupt, truncated, empty, unsupported mode) are skipped and counted, and one
line ``skipped N unreadable files (first: PATH: REASON)`` goes to ``log`` at the end of the scan.
Decompression bombs: images above Pillow's limit (``PIL.Image.MAX_IMAGE_PIXELS`` x 2, about 179
megapixels by default) are *skipped as unreadable* with Pillow's reason; the global limit is not
changed. (Between 1x and 2x the limit Pillow warns and the image loads normally.)

With ``class_subfolders`` the first-level subfolder name is the class: sorted names -> 0, 1, ...
(a class keeps its index even if all its files are unreadable); images directly in the root are
then ignored, with a log line. ``max_images`` keeps the first N image files in sorted order.
Files are decoded by a small thread pool (Pillow releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ddpmkit.data.images import ImageData, as_image_size, resize_center_crop
from ddpmkit.errors import DatasetError

__all__ = [
    "EXTENSIONS",
    "load_image_file",
    "load_image_files",
    "load_image_folder",
    "scan_image_files",
]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def scan_image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden entries skipped), sorted by path parts."""
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in EXTENSIONS:
                p = Path(dirpath) / f
                if p.is_file():
                    found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _is_gray_palette(im: Image.Image) -> bool:
    pal = im.getpalette() or []
    return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))


def _on_white(im: Image.Image) -> Image.Image:
    """Composite an image with alpha onto white; returns 'L' for gray+alpha, else 'RGB'."""
    gray = im.mode in ("LA", "La")
    rgba = im.convert("LA" if gray else "RGBA")  # also un-premultiplies 'La' / 'RGBa'
    base = Image.new("L", rgba.size, 255) if gray else Image.new("RGB", rgba.size, (255,) * 3)
    base.paste(rgba.convert("L" if gray else "RGB"), mask=rgba.getchannel("A"))
    return base


def _to_8bit(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 'L' (grayscale modes, gray palettes) or 'RGB'."""
    mode = im.mode
    if mode == "L" or mode == "RGB":
        return im
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if mode.startswith("I;16") or (arr.size and int(arr.max()) > 255):
            arr = (np.clip(arr, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if mode == "F":
        farr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        if farr.size and float(farr.max()) <= 1.0:
            farr = farr * 255.0
        return Image.fromarray(np.clip(np.round(farr), 0, 255).astype(np.uint8))
    if mode in ("P", "PA"):
        gray = _is_gray_palette(im)
        has_alpha = mode == "PA" or "transparency" in im.info
        out = _on_white(im.convert("RGBA")) if has_alpha else im.convert("RGB")
        return out.convert("L") if gray else out
    if mode in _ALPHA_MODES:
        return _on_white(im)
    return im.convert("RGB")  # CMYK, YCbCr, RGBX, LAB, HSV, ...


def _draft(im: Image.Image, size: tuple[int, int]) -> None:
    """Let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while keeping >= 2x the target."""
    if im.format != "JPEG" or im.mode not in ("L", "RGB"):
        return
    h, w = size
    # Conservative for any EXIF rotation: the shorter source side must still cover max(h, w).
    scale = 2.0 * max(h, w) / min(im.width, im.height)
    if scale <= 0.5:
        im.draft(im.mode, (math.ceil(im.width * scale), math.ceil(im.height * scale)))


def load_image_file(path: str | Path, size: tuple[int, int], channels: int | None) -> np.ndarray:
    """One image as uint8 (H, W) (grayscale) or (H, W, 3); see the module docstring.

    ``channels`` 1 or 3 forces the result; None keeps the image's own kind. Raises whatever
    Pillow raises for an unreadable file (OSError, ValueError, DecompressionBombError, ...).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise OSError("empty file (0 bytes)")
    with Image.open(path) as opened:
        opened.seek(0)
        _draft(opened, size)
        opened.load()
        try:
            im = ImageOps.exif_transpose(opened)
        except Exception:  # malformed EXIF: keep the stored orientation rather than drop it
            im = opened.copy()
        im = _to_8bit(im)
        if channels == 1 and im.mode != "L":
            im = im.convert("L")
        im = resize_center_crop(im, size)
        arr = np.asarray(im, dtype=np.uint8)
    if channels == 3 and arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr


def _reason(e: BaseException) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not an image Pillow can identify (corrupt or wrong extension)"
    msg = str(e).splitlines()[0].strip() if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _try_load(
    path: Path, size: tuple[int, int], channels: int | None
) -> tuple[np.ndarray | None, str]:
    try:
        return load_image_file(path, size, channels), ""
    except MemoryError:
        raise
    except Exception as e:  # any decoder failure is "unreadable": counted and reported
        return None, _reason(e)


def _native_size(files: list[Path], base: Path) -> tuple[int, int]:
    """The one (H, W) shared by all readable images (EXIF rotation applied), else DatasetError."""
    sizes: dict[tuple[int, int], Path] = {}
    for p in files:
        try:
            with Image.open(p) as im:
                w, h = im.size
                if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees
                    w, h = h, w
        except Exception:  # unreadable: reported by the loading pass
            continue
        sizes.setdefault((h, w), p)
        if len(sizes) > 1:
            (a, pa), (b, pb) = sizes.items()
            raise DatasetError(
                f"images under {base} differ in size ({a[0]}x{a[1]} {pa.name}, {b[0]}x{b[1]} "
                f"{pb.name}); set data.image_size (e.g. [64] or [H, W]) to resize them"
            )
    if not sizes:
        return (1, 1)  # nothing readable: the loading pass reports it
    return next(iter(sizes))


def load_image_folder(
    root: str | Path,
    image_size: int | tuple[int, int] | None,
    channels: int | None = None,
    class_subfolders: bool = False,
    max_images: int | None = None,
    log: Callable[[str], None] = print,
    *,
    num_threads: int | None = None,
) -> ImageData:
    """Every readable image under ``root`` as uint8 (N, C, H, W); see the module docstring.

    ``image_size`` is S or (H, W); None means the images' own size, which must then be the
    same for all of them. ``channels`` is 1, 3 or None (infer). With ``class_subfolders`` the
    first-level subfolder is the label. Raises :class:`DatasetError` for a missing or empty
    folder, or one where no image could be read.
    """
    base = Path(root).expanduser()
    if not base.exists():
        raise DatasetError(f"image folder {base} does not exist; fix data.root")
    if not base.is_dir():
        raise DatasetError(f"image folder {base} is not a folder; point data.root at a folder")
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1, 3 or None (infer), got {channels!r}")
    if max_images is not None and max_images < 1:
        raise DatasetError(f"max_images must be >= 1 or None, got {max_images}")
    files = scan_image_files(base)
    if class_subfolders:
        top = [p for p in files if len(p.relative_to(base).parts) < 2]
        files = [p for p in files if len(p.relative_to(base).parts) >= 2]
        if top:
            log(
                f"ignored {len(top)} image file{'s' * (len(top) != 1)} directly in {base} "
                "(with class_subfolders every image must be inside a class subfolder)"
            )
    if not files:
        where = "in class subfolders of" if class_subfolders else "under"
        raise DatasetError(
            f"no image files ({', '.join(e[1:] for e in EXTENSIONS)}) found {where} {base}; "
            "point data.root at a folder of images"
        )
    if max_images is not None:
        files = files[:max_images]
    size = as_image_size(image_size) if image_size is not None else _native_size(files, base)
    names = sorted({p.relative_to(base).parts[0] for p in files}) if class_subfolders else []
    index = {n: i for i, n in enumerate(names)}

    images, kept = load_image_files(files, size, channels, base, log, num_threads=num_threads)
    labels = [index[p.relative_to(base).parts[0]] for p in kept] if class_subfolders else []
    c = int(images.shape[1])
    lab = torch.tensor(labels, dtype=torch.int64) if class_subfolders else None
    desc = f"folder {base} ({len(kept)} images, {size[0]}x{size[1]}, {c} channel{'s' * (c > 1)}"
    desc += f", {len(names)} classes)" if class_subfolders else ")"
    return ImageData(images, lab, names, desc)


def load_image_files(
    files: list[Path],
    size: tuple[int, int],
    channels: int | None,
    base: Path,
    log: Callable[[str], None] = print,
    *,
    num_threads: int | None = None,
) -> tuple[torch.Tensor, list[Path]]:
    """The readable ones of ``files`` as uint8 (N, C, H, W), and which files they are.

    As :func:`load_image_folder` after its scan (same decoding, thread pool, one log line for
    the unreadable files, DatasetError naming ``base`` if none is readable), for callers that
    need to know which file each image came from (captions, see :mod:`ddpmkit.data.captioned`).
    """
    workers = num_threads or min(8, 2 * (os.cpu_count() or 1))
    if workers <= 1 or len(files) < 16:
        results = [_try_load(p, size, channels) for p in files]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda p: _try_load(p, size, channels), files))

    arrays: list[np.ndarray] = []
    kept: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for p, (arr, why) in zip(files, results):
        if arr is None:
            skipped.append((p, why))
            continue
        arrays.append(arr)
        kept.append(p)
    if skipped:
        first, why = skipped[0]
        n = len(skipped)
        log(f"skipped {n} unreadable file{'s' * (n != 1)} (first: {first}: {why})")
    if not arrays:
        if not skipped:
            raise DatasetError(f"no image files given under {base}")
        first, why = skipped[0]
        raise DatasetError(
            f"none of the {len(files)} image files under {base} could be read (first: {first}: "
            f"{why}); check the files or point data.root elsewhere"
        )

    c = channels or (1 if all(a.ndim == 2 for a in arrays) else 3)
    out = np.empty((len(arrays), c, size[0], size[1]), dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # gray broadcasts to 3
    return torch.from_numpy(out), kept
