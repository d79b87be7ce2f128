"""Folders of real image files in every format and mode Pillow writes: PNG/JPEG/WEBP/BMP/GIF/TIFF
in L, LA, P (+transparency), RGBA, I;16, CMYK, F; EXIF rotation; corrupt, empty and non-image
files; nested and class subfolders; channel inference; sizes; errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.data import DatasetError, load_dataset, load_image_folder
from ddpmkit.data.images import resize_center_crop

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)


def quiet(msg: str) -> None:
    pass


def make_tree(root: Path) -> None:
    """9 readable images in two classes, plus 2 unreadable and 2 ignored files."""
    (root / "cats" / "deep").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.fromarray(RGB).save(root / "cats" / "a.png")
    Image.fromarray(RGB).save(root / "cats" / "b.JPG", quality=90)
    Image.fromarray(RGB).save(root / "cats" / "deep" / "c.webp")
    Image.fromarray(RGB).convert("RGBA").save(root / "dogs" / "d.png")
    Image.fromarray(RGB).convert("P").save(root / "dogs" / "e.gif")
    Image.fromarray(RGB[:, :, 0]).convert("LA").save(root / "dogs" / "f.png")
    Image.fromarray(RGB).convert("CMYK").save(root / "dogs" / "g.tif")
    Image.fromarray(RGB[:, :, 0].astype(np.uint16) * 257).save(root / "dogs" / "h16.png")
    Image.fromarray(RGB).save(root / "dogs" / "i.bmp")
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "dogs" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dogs" / "notes.txt").write_text("not an image, not counted")
    Image.fromarray(RGB).save(root / "dogs" / ".hidden.png")  # hidden: ignored


def test_folder_tree_all_formats_and_modes(tmp_path: Path) -> None:
    make_tree(tmp_path)
    logs: list[str] = []
    d = load_image_folder(tmp_path, 16, class_subfolders=True, log=logs.append)
    assert d.images.shape == (9, 3, 16, 16) and d.images.dtype == torch.uint8
    assert d.class_names == ["cats", "dogs"] and d.num_classes == 2
    assert d.labels is not None and d.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert len(logs) == 1, logs
    assert logs[0].startswith("skipped 2 unreadable files (first: ")
    assert "corrupt.jpg: " in logs[0]  # sorted: corrupt.jpg comes before empty.png
    # The RGB-ish copies agree with each other (PNG exact, BMP exact, WEBP/JPEG lossy).
    png, jpg, webp, rgba, bmp = (d.images[i].float() for i in (0, 1, 2, 3, 8))
    assert torch.equal(png, bmp) and torch.equal(png, rgba)  # opaque RGBA == RGB
    assert (png - jpg).abs().mean() < 12 and (png - webp).abs().mean() < 12
    # 1-channel sources in an RGB dataset are replicated.
    for i in (5, 7):  # LA, I;16
        assert torch.equal(d.images[i, 0], d.images[i, 1])
    # Unlabelled, same files, non-square, forced grayscale.
    g = load_image_folder(tmp_path, (8, 12), channels=1, log=quiet)
    assert g.images.shape == (9, 1, 8, 12) and g.labels is None and g.class_names == []


def test_grayscale_folder_stays_one_channel(tmp_path: Path) -> None:
    gray = RGB[:, :, 1]
    Image.fromarray(gray).save(tmp_path / "l.png")
    Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "i16.tif")
    Image.fromarray(gray).convert("P").save(tmp_path / "p.gif")  # gray palette
    Image.fromarray(gray > 128).save(tmp_path / "bits.bmp")  # mode '1'
    Image.fromarray(gray.astype(np.float32) / 255.0).save(tmp_path / "f.tiff")  # mode 'F'
    d = load_image_folder(tmp_path, (40, 60), log=quiet)
    assert d.images.shape == (6, 1, 40, 60)
    by_name = dict(zip(["bits", "f", "i16", "l", "la", "p"], d.images[:, 0]))
    ref = torch.from_numpy(gray)
    for name in ("f", "i16", "l", "la", "p"):
        assert (by_name[name].int() - ref.int()).abs().max() <= 1, name
    assert set(by_name["bits"].unique().tolist()) <= {0, 255}
    c3 = load_image_folder(tmp_path, 8, channels=3, log=quiet)
    assert c3.images.shape == (6, 3, 8, 8) and torch.equal(c3.images[:, 0], c3.images[:, 2])


def test_transparency_is_composited_onto_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200  # red-ish, fully transparent except the top-left quarter
    rgba[:5, :5, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "a_rgba.png")
    la = np.zeros((10, 10, 2), np.uint8)
    la[..., 1] = 0  # gray 0 but fully transparent -> white
    Image.fromarray(la, "LA").save(tmp_path / "b_la.png")
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    pal.paste(1, (0, 0, 10, 5))
    pal.save(tmp_path / "c_p.gif", transparency=0)  # index 0 (blue) transparent
    half = np.zeros((10, 10, 4), np.uint8)
    half[..., 3] = 128  # black at 50% alpha -> mid gray
    Image.fromarray(half).save(tmp_path / "d_half.webp", lossless=True)
    d = load_image_folder(tmp_path, 10, log=quiet)
    assert d.images.shape == (4, 3, 10, 10)
    a, b, c, h = d.images
    assert a[:, 5:, 5:].eq(255).all() and a[0, 0, 0] == 200 and a[1, 0, 0] == 0
    assert b.eq(255).all()
    assert c[:, 5:, :].eq(255).all()  # transparent palette entry
    assert c[:, :5, :].tolist() == [[[0] * 10] * 5, [[255] * 10] * 5, [[0] * 10] * 5]
    assert (h.int() - 127).abs().max() <= 1


def test_sixteen_bit_and_cmyk_values(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 257 * 100, 65535, 65535]], np.uint16)).save(tmp_path / "a.png")
    Image.new("CMYK", (4, 1), (0, 255, 255, 0)).save(tmp_path / "b.tif")  # pure red
    d = load_image_folder(tmp_path, (1, 4), log=quiet)
    assert d.images[0, 0, 0].tolist() == [0, 100, 255, 255]
    assert d.images[1, :, 0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40), np.uint8)  # W=40, H=20: left half black, right half white
    stored[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": left column -> top row
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    d = load_image_folder(tmp_path, (40, 20), log=quiet)
    img = d.images[0, 0].float()
    assert d.images.shape == (1, 1, 40, 20)
    assert img[:16].mean() < 30 and img[24:].mean() > 225  # top black, bottom white
    native = load_image_folder(tmp_path, None, log=quiet)
    assert native.images.shape == (1, 1, 40, 20)


def test_resize_covers_then_center_crops(tmp_path: Path) -> None:
    wide = np.zeros((10, 30), np.uint8)  # black | white | black thirds
    wide[:, 10:20] = 255
    Image.fromarray(wide).save(tmp_path / "wide.png")
    d = load_image_folder(tmp_path, 5, log=quiet)  # scale 0.5 -> 15x5, keep the middle 5x5
    assert d.images.shape == (1, 1, 5, 5) and int(d.images.min()) >= 230
    tall = load_image_folder(tmp_path, (20, 30), log=quiet)  # scale 2 -> 60x20, crop 30 wide
    assert tall.images.shape == (1, 1, 20, 30)
    assert tall.images[0, 0, :, 10:20].float().mean() > 240
    assert tall.images[0, 0, :, :3].float().mean() < 15


def test_resize_never_builds_a_negative_crop_box(tmp_path: Path) -> None:
    # Found on crops of real photographs (scripts/sample_image_folder.py): a 196x201 image at
    # 64x64 got the crop box (-1.4e-14, 2.5, 196.0, 198.5) from float rounding, Pillow refused
    # it, and 92 of 2,000 images were skipped as "unreadable". Every size in a dense grid now
    # resizes, and a flat image stays flat (the box lies inside the image).
    for sw in range(60, 261):
        for sh in range(60, 261, 7):
            im = Image.new("RGB", (sw, sh), (200, 30, 90))
            for size in ((64, 64), (28, 28), (20, 30)):
                out = np.asarray(resize_center_crop(im, size))
                assert out.shape == (*size, 3), (sw, sh, size)
    flat = np.asarray(resize_center_crop(Image.new("RGB", (196, 201), (200, 30, 90)), (64, 64)))
    assert (flat == np.array([200, 30, 90], np.uint8)).all()
    Image.fromarray(RGB).resize((196, 201)).save(tmp_path / "was_skipped.png")
    logs: list[str] = []
    d = load_image_folder(tmp_path, 64, log=logs.append)
    assert d.images.shape == (1, 3, 64, 64) and not logs


def test_animated_gif_uses_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    d = load_image_folder(tmp_path, 8, log=quiet)
    assert d.images.shape == (1, 1, 8, 8) and int(d.images.max()) == 0


def test_class_subfolders_and_top_level_files(tmp_path: Path) -> None:
    for cls, value in (("b_sneaker", 10), ("a_boot", 20), ("c_bag", 30)):
        (tmp_path / cls / "nested").mkdir(parents=True)
        Image.new("L", (6, 6), value).save(tmp_path / cls / "x.png")
        Image.new("L", (6, 6), value + 1).save(tmp_path / cls / "nested" / "y.png")
    Image.new("L", (6, 6), 99).save(tmp_path / "stray.png")
    logs: list[str] = []
    d = load_image_folder(tmp_path, 6, class_subfolders=True, log=logs.append)
    assert d.class_names == ["a_boot", "b_sneaker", "c_bag"]
    assert d.labels is not None and d.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert d.images[:, 0, 0, 0].tolist() == [21, 20, 11, 10, 31, 30]  # nested/ sorts before x
    assert len(logs) == 1 and "ignored 1 image file directly in" in logs[0]
    plain = load_image_folder(tmp_path, 6, log=quiet)
    assert len(plain) == 7 and plain.labels is None
    with pytest.raises(DatasetError, match="class subfolders"):
        load_image_folder(tmp_path / "a_boot" / "nested", 6, class_subfolders=True, log=quiet)
    via_registry = load_dataset("folder", root=str(tmp_path), image_size=6, class_subfolders=True)
    assert torch.equal(via_registry.images, d.images)


def test_many_files_are_loaded_in_order_in_parallel(tmp_path: Path) -> None:
    n = 300
    for i in range(n):
        color = (i % 256, (7 * i) % 256, 0)
        Image.new("RGB", (64, 48), color).save(tmp_path / f"img_{i:04d}.png")
    t0 = time.perf_counter()
    d = load_image_folder(tmp_path, 32, log=quiet)
    elapsed = time.perf_counter() - t0
    assert d.images.shape == (n, 3, 32, 32)
    assert d.images[:, 0, 5, 5].tolist() == [i % 256 for i in range(n)]
    assert d.images[:, 1, 5, 5].tolist() == [(7 * i) % 256 for i in range(n)]
    assert elapsed < 10, f"{n} small PNGs took {elapsed:.1f} s"
    first = load_image_folder(tmp_path, 32, max_images=10, log=quiet)
    assert torch.equal(first.images, d.images[:10])
    serial = load_image_folder(tmp_path, 32, log=quiet, num_threads=1)
    assert torch.equal(serial.images, d.images)


def test_decompression_bombs_are_skipped_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("L", (100, 100), 7).save(tmp_path / "big.png")
    Image.new("L", (10, 10), 9).save(tmp_path / "small.png")
    # Pillow refuses images above 2 x MAX_IMAGE_PIXELS; lower the limit instead of writing
    # a real 180-megapixel file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    logs: list[str] = []
    d = load_image_folder(tmp_path, 10, log=logs.append)
    assert len(d) == 1 and int(d.images.max()) == 9
    assert logs and "skipped 1 unreadable file (first: " in logs[0]
    assert "big.png: DecompressionBombError" in logs[0]


def test_native_size_must_be_uniform(tmp_path: Path) -> None:
    Image.new("RGB", (12, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (12, 10)).save(tmp_path / "b.png")
    d = load_dataset("folder", root=tmp_path)
    assert d.images.shape == (2, 3, 10, 12)
    Image.new("RGB", (30, 30)).save(tmp_path / "c.png")
    with pytest.raises(DatasetError, match="differ in size.*data.image_size"):
        load_image_folder(tmp_path, None, log=quiet)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as e:
        load_image_folder(tmp_path / "nope", 8)
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="is not a folder"):
        load_image_folder(tmp_path / "file.png", 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no image files") as e:
        load_image_folder(empty, 8)
    assert str(empty) in str(e.value)
    (empty / "readme.txt").write_text("hi")
    (empty / ".hidden.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no image files"):
        load_image_folder(empty, 8)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"junk")
    (bad / "y.jpg").write_bytes(b"")
    logs: list[str] = []
    with pytest.raises(DatasetError, match="none of the 2 image files") as e:
        load_image_folder(bad, 8, log=logs.append)
    assert str(bad) in str(e.value) and logs[0].startswith("skipped 2 unreadable files")
    with pytest.raises(DatasetError, match="channels"):
        load_image_folder(bad, 8, channels=4)
