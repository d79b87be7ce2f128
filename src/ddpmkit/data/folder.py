"""A folder of images of any size -> an in-memory uint8 dataset at the training size.

Recursive; png, jpg/jpeg, webp, bmp, gif (first frame), tif/tiff. Each image is turned upright
(EXIF orientation), converted to grayscale or RGB (transparency composited onto white; 16-bit and
CMYK handled), resized so its shorter side fits, then centre-cropped. Unreadable files (corrupt,
empty, too large for Pillow's decompression-bomb guard) are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ddpmkit.data.images import DatasetError, ImageData

__all__ = ["EXTENSIONS", "load_image_folder", "load_image_file", "resize_center_crop"]

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _to_mode(im: object, channels: int) -> object:
    """Any Pillow mode -> 'L' (channels=1) or 'RGB' (channels=3)."""
    from PIL import Image

    assert isinstance(im, Image.Image)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(
            np.clip(arr * (255.0 if arr.max() <= 1 else 1.0), 0, 255).astype(np.uint8), "L"
        )
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("L" if channels == 1 else "RGB")


def resize_center_crop(im: object, size: tuple[int, int]) -> object:
    """Scale so the image covers (H, W), then crop the centre (bicubic, antialiased)."""
    from PIL import Image

    assert isinstance(im, Image.Image)
    h, w = size
    scale = max(h / im.height, w / im.width)
    nw, nh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    if (nw, nh) != im.size:
        im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - w) // 2, (nh - h) // 2
    return im.crop((left, top, left + w, top + h))


def load_image_file(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image as uint8 (C, H, W); raises OSError/ValueError if it cannot be decoded."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.seek(0)
        im.load()
        im = ImageOps.exif_transpose(im) or im
        im = resize_center_crop(_to_mode(im, channels), size)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _is_gray(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def load_image_folder(
    root: str | Path,
    image_size: int | tuple[int, int],
    channels: int | None = None,
    class_subfolders: bool = False,
    max_images: int | None = None,
    log: Callable[[str], None] = print,
) -> ImageData:
    """Every readable image under ``root`` at ``image_size``; see the module docstring.

    ``channels`` None = 1 if every image is grayscale, else 3. With ``class_subfolders`` the
    first-level subfolder is the label (sorted names -> 0, 1, ...).
    """
    from PIL import Image

    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"image folder {str(base)!r} does not exist or is not a folder")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    files = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if class_subfolders:
        files = [p for p in files if len(p.relative_to(base).parts) >= 2]
    if max_images is not None:
        files = files[:max_images]
    if not files:
        raise DatasetError(f"no image files ({', '.join(EXTENSIONS)}) found under {str(base)!r}")
    skipped: list[tuple[Path, str]] = []
    if channels is None:
        gray = True
        for p in files:
            try:
                if not _is_gray(p):
                    gray = False
                    break
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
        channels = 1 if gray else 3
    arrays, labels = [], []
    names = sorted({p.relative_to(base).parts[0] for p in files}) if class_subfolders else []
    index = {n: i for i, n in enumerate(names)}
    for p in files:
        try:
            arrays.append(load_image_file(p, (int(size[0]), int(size[1])), channels))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            skipped.append((p, str(e).splitlines()[0] if str(e) else type(e).__name__))
            continue
        if class_subfolders:
            labels.append(index[p.relative_to(base).parts[0]])
    if skipped:
        first, why = skipped[0]
        log(f"skipped {len(skipped)} unreadable files (first: {first}: {why})")
    if not arrays:
        raise DatasetError(
            f"none of the {len(files)} image files under {str(base)!r} could be read"
        )
    images = torch.from_numpy(np.stack(arrays))
    lab = torch.tensor(labels, dtype=torch.long) if class_subfolders else None
    return ImageData(
        images,
        lab,
        names,
        f"folder {base} ({len(arrays)} images, {size[0]}x{size[1]}, {channels} ch)",
    )
