"""Write a folder of real RGB photographs' crops, for trying the image-folder pipeline offline.

    .venv/bin/python scripts/sample_image_folder.py data/photo_crops            # train split
    .venv/bin/python scripts/sample_image_folder.py data/photo_crops_test --seed 1
    .venv/bin/ddpm train folder64 --set data.root="data/photo_crops" \
        --set data.class_subfolders=true

The source is the two photographs scikit-learn ships (``sklearn.datasets.load_sample_images``:
``china.jpg``, a temple under a blue sky, and ``flower.jpg``, a pink-red flower; 640x427; CC BY
2.0, by the Flickr users danielbuechele and vultilion, per scikit-learn's
``datasets/images/README.txt``), so it needs no download. Each crop is a random square or
rectangle of 64-256 pixels a side, sometimes flipped, saved as JPEG or PNG at its own size: the
folder exercises what ``folder64`` promises (any size, any format Pillow reads, resized to cover
64x64 and centre-cropped) with one subfolder per photograph, so ``data.class_subfolders=true``
makes it a 2-class conditional dataset. A different ``--seed`` gives a disjoint-in-draw test
split (the same photographs, other crops).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_crops(out: Path, per_class: int, seed: int) -> int:
    """Write ``per_class`` crops of each photograph into ``out/<name>/``; returns the count."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(seed)
    n = 0
    for image, filename in zip(photos.images, photos.filenames):
        name = Path(filename).stem
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        h, w, _ = image.shape
        for i in range(per_class):
            ch = int(rng.integers(64, 257))
            cw = ch if rng.random() < 0.5 else int(rng.integers(64, 257))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = image[top : top + ch, left : left + cw]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            ext = "jpg" if i % 2 == 0 else "png"
            path = folder / f"{name}_{seed}_{i:05d}.{ext}"
            tmp = path.with_name(f".{path.name}.tmp")  # never a half-written image in the folder
            Image.fromarray(np.ascontiguousarray(crop)).save(
                tmp, format="JPEG" if ext == "jpg" else "PNG"
            )
            tmp.replace(path)
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to create (must not exist or be empty)")
    ap.add_argument("--per-class", type=int, default=1000, help="crops per photograph")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.per_class < 1:
        sys.exit("error: --per-class must be at least 1")
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"error: {args.out} is not empty; choose a new folder")
    n = write_crops(args.out, args.per_class, args.seed)
    print(f"wrote {n} crops to {args.out} (subfolders china/ and flower/)")


if __name__ == "__main__":
    main()
