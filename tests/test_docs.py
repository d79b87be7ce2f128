"""The docs cannot rot: every ``ddpm`` command in docs/tour.md and README.md runs (at a tiny
scale: fewer steps and a smaller network, added as extra arguments), and every relative link and
image in the docs exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SMALL_NET = [
    "--set", "model.base_channels=16", "--set", "model.num_res_blocks=1",
    "--set", "train.batch_size=8", "--set", "sample.steps=3", "--set", "sample.num=10",
    "--set", "train.sample_every=0", "--set", "train.log_every=2",
]  # fmt: skip


def commands(path: Path) -> list[list[str]]:
    """``ddpm ...`` lines of the fenced bash blocks, as argument lists (without 'ddpm')."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.splitlines():
            line = line.strip()
            for prefix in ("ddpm ", ".venv/bin/ddpm "):
                if line.startswith(prefix):
                    out.append(shlex.split(line[len(prefix) :].split("#")[0]))
    return out


def shrink(args: list[str]) -> list[str]:
    """The same command at test scale."""
    if args[0] == "train":
        if "--steps" in args:
            i = args.index("--steps")
            args = args[:i] + args[i + 2 :]
        resume = "--resume" in args
        extra = ["--steps", "30" if resume else "20", "--no-progress"]
        toy = len(args) > 1 and args[1] in ("s_curve", "moons")
        return args + extra + ([] if toy or resume else SMALL_NET)
    if args[0] == "sample":
        extra = ["--steps", "3"] if "--steps" not in args else []
        if "--num" in args:
            i = args.index("--num")
            args = args[: i + 1] + ["2"] + args[i + 2 :]
        return args + extra
    if args[0] == "plot" and args[1] == "reverse":
        return args + ["--steps", "5"]
    return args


def test_docs_have_commands() -> None:
    tour = commands(ROOT / "docs" / "tour.md")
    assert len(tour) >= 10 and {c[0] for c in tour} >= {"train", "sample", "plot"}


def test_every_doc_command_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    imgs = tmp_path / "my_images"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    ran = 0
    for doc in (ROOT / "docs" / "tour.md", ROOT / "README.md"):
        for args in commands(doc):
            small = shrink(args)
            assert main(small) == 0, f"{doc.name}: ddpm {' '.join(args)}"
            ran += 1
    assert ran >= 12


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_and_images_exist(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)\)", doc.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
