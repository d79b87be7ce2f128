"""A user's folder of captioned images: sidecar name.txt and metadata.jsonl (Hugging Face
ImageFolder), precedence, whitespace, and every bad input skipped, counted and reported in one
line (never a crash)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmkit.data.captioned import load_captioned_folder
from ddpmkit.errors import DatasetError


def png(path: Path, value: int, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint8)).save(path)
    return path


def load(root: Path, **kw: object) -> tuple[object, list[str]]:
    lines: list[str] = []
    return load_captioned_folder(root, log=lines.append, **kw), lines  # type: ignore[arg-type]


def test_sidecar_captions(tmp_path: Path) -> None:
    png(tmp_path / "b.png", 20)
    (tmp_path / "b.txt").write_text("a  bag\n on black ", encoding="utf-8")
    png(tmp_path / "a.png", 10)
    (tmp_path / "a.txt").write_bytes("\ufeffa sandal, caf\u00e9".encode())  # BOM, non-ASCII
    png(tmp_path / "sub" / "c.png", 30)
    (tmp_path / "sub" / "c.txt").write_text("", encoding="utf-8")  # empty: the null prompt
    data, lines = load(tmp_path)
    assert data.captions == ["a sandal, caf\u00e9", "a bag on black", ""]  # type: ignore[attr-defined]
    assert data.images[:, 0, 0, 0].tolist() == [10, 20, 30]  # type: ignore[attr-defined]
    assert data.images.shape == (3, 1, 8, 8) and data.garments is None  # type: ignore[attr-defined]
    assert lines == []


def test_metadata_jsonl_captions(tmp_path: Path) -> None:
    png(tmp_path / "train" / "x.png", 1)
    png(tmp_path / "train" / "deep" / "y.png", 2)
    png(tmp_path / "z.png", 3)
    rows = [{"file_name": "x.png", "text": "first"}, {"file_name": "deep/y.png", "text": "second"}]
    (tmp_path / "train" / "metadata.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8"
    )
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "z.png", "text": "third", "extra": 1}), encoding="utf-8"
    )
    (tmp_path / "z.txt").write_text("the sidecar loses", encoding="utf-8")
    data, lines = load(tmp_path, image_size=4)
    # path order: train/deep/y.png < train/x.png < z.png
    assert data.captions == ["second", "first", "third"]  # type: ignore[attr-defined]
    assert data.images[:, 0, 0, 0].tolist() == [2, 1, 3]  # type: ignore[attr-defined]
    assert data.images.shape[-2:] == (4, 4) and lines == []  # type: ignore[attr-defined]


def test_bad_input_is_skipped_counted_and_reported_in_one_line(tmp_path: Path) -> None:
    for i in range(6):
        png(tmp_path / f"im{i}.png", 10 * i)
    (tmp_path / "im0.txt").write_text("good sidecar", encoding="utf-8")
    (tmp_path / "im1.txt").write_bytes(b"caf\xe9 latin-1")  # not UTF-8
    (tmp_path / "im5.png").write_bytes(b"not a png")  # unreadable image, captioned
    (tmp_path / "im5.txt").write_text("broken image", encoding="utf-8")
    meta = [
        json.dumps({"file_name": "im2.png", "text": "good entry"}),
        '{"file_name": "im3.png", "text": ',  # not valid JSON
        b"\xff\xfe{}".decode("latin-1"),  # written as UTF-8 below: valid bytes, invalid JSON
        json.dumps({"file_name": "im3.png"}),  # no text
        json.dumps(["im3.png", "a list"]),  # not an object
        json.dumps({"file_name": "missing.png", "text": "no such image"}),
        json.dumps({"file_name": "im2.png", "text": "repeated"}),
    ]
    raw = "\n".join(meta).encode("utf-8") + b"\n\xff\xfe bad bytes\n"  # a line not UTF-8
    (tmp_path / "metadata.jsonl").write_bytes(raw)
    data, lines = load(tmp_path)  # im3, im4: no caption
    assert data.captions == ["good sidecar", "good entry"]  # type: ignore[attr-defined]
    assert len(lines) == 2, lines
    cap = next(line for line in lines if line.startswith("captions under"))
    assert "1 caption file that is not UTF-8 (first: " in cap and "im1.txt" in cap
    assert "3 metadata.jsonl lines that are not valid JSON (first: " in cap
    assert "metadata.jsonl:2)" in cap
    assert "2 metadata.jsonl entries without a string file_name and text" in cap
    assert "1 metadata.jsonl entry naming no image file (first: missing.png)" in cap
    assert "1 repeated metadata.jsonl entry (the first kept)" in cap
    assert "2 images without a caption" in cap
    assert any(line.startswith("skipped 1 unreadable file") and "im5.png" in line for line in lines)


def test_nothing_captioned_is_an_error(tmp_path: Path) -> None:
    png(tmp_path / "a.png", 1)
    (tmp_path / "a.txt").write_bytes(b"\xff\xff")
    with pytest.raises(DatasetError, match="no captioned image under"):
        load(tmp_path)
    with pytest.raises(DatasetError, match="is not a folder"):
        load(tmp_path / "nope")
