"""The docs cannot rot.

* Every ``ddpm`` command in a fenced ``bash`` block of docs/tour.md and README.md runs through
  ``ddpmkit.cli.main`` and writes what it names with ``--out``/``--gif``. The commands run at a
  tiny scale: this test rewrites the known heavy arguments (fewer training steps, a smaller
  network, 2 samples in 3 steps) and points the paths of user data (``data.root=``, ``--root``,
  ``--image``) at a small image folder it creates; nothing in the library changes behaviour for
  tests. Each document runs in its own empty working directory, so it must be self-contained.
* Every fenced ``python`` block with ``>>>`` prompts in those documents is a doctest, run in
  the same working directory after the document's commands (so ``runs/fashion_mnist`` is the
  tiny run its ``ddpm train`` made), with ELLIPSIS for numbers that depend on the run's size.
* Every relative link and image in docs/*.md and README.md exists, ``#anchors`` match a heading,
  and a link like [`q_sample`](../src/ddpmkit/diffusion.py) names a function or class that the
  linked file defines.
* The figures are valid PNGs under 300 KB, and every one of them is used by some document.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = [ROOT / "docs" / "tour.md", ROOT / "docs" / "evaluation.md", ROOT / "README.md"]
TOYS = ("s_curve", "moons", "swiss_roll", "eight_gaussians")

# Added to `ddpm train` of an image model (not on --resume: the run's saved config is reused).
SMALL_NET = [
    "model.base_channels=16", "model.num_res_blocks=1", "train.batch_size=4",
    "sample.num=10", "sample.steps=2", "train.sample_every=0", "train.log_every=2",
]  # fmt: skip
SMALL_TOY = ["train.batch_size=64", "train.log_every=2", "train.sample_every=0"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny networks: one torch thread is faster, and far faster on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def strip_code(text: str) -> str:
    """The markdown without fenced code blocks (their contents are neither links nor headings)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def commands(path: Path) -> list[list[str]]:
    """The ``ddpm ...`` commands of the fenced bash blocks, as argument lists without 'ddpm'.

    Backslash continuations are joined, ``a && b`` gives both, comments are dropped, and
    ``.venv/bin/ddpm`` counts as ``ddpm``.
    """
    out = []
    for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(), flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] in ("ddpm", ".venv/bin/ddpm"):
                    out.append(words[1:])
    return out


def doctest_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each fenced ``python`` block that holds ``>>>`` examples."""
    text = path.read_text()
    out = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        if ">>>" in m.group(1):
            out.append((text[: m.start()].count("\n") + 1, m.group(1)))
    return out


def run_doctests(path: Path) -> None:
    """Run the doctest blocks of ``path``; fail with the report of the first that fails."""
    import doctest
    import io

    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    for line, block in doctest_blocks(path):
        test = doctest.DocTestParser().get_doctest(block, {}, f"{path.name}:{line}", None, line)
        report = io.StringIO()
        result = doctest.DocTestRunner(optionflags=flags).run(test, out=report.write)
        assert result.failed == 0, f"{path.name}, block at line {line}:\n{report.getvalue()}"


def _set(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag value`` replacing any existing ``flag X``."""
    if flag in args:
        i = args.index(flag)
        return [*args[:i], flag, value, *args[i + 2 :]]
    return [*args, flag, value]


def shrink(args: list[str], user_images: Path) -> list[str]:
    """The same command at test scale, with user data paths pointing at ``user_images``."""
    args = list(args)
    for i, a in enumerate(args):  # user data -> the test's image folder
        if a.startswith("data.root="):
            args[i] = f'data.root="{user_images.as_posix()}"'
        elif i > 0 and args[i - 1] == "--root":
            args[i] = str(user_images)
        elif i > 0 and args[i - 1] == "--image":
            args[i] = str(user_images / "0.png")
    if args[0] == "train":
        resume = "--resume" in args
        args = _set(args, "--steps", "6" if resume else "4") + ["--no-progress"]
        if not resume:
            toy = len(args) > 1 and args[1] in TOYS
            for kv in SMALL_TOY if toy else SMALL_NET:
                args += ["--set", kv]
            if len(args) > 1 and args[1] == "fashion_text":  # 64 captions for MiniLM, not 120,000
                args += ["--set", "data.max_items=64", "--set", "text.align_steps=2",
                         "--set", "text.align_batch=8"]  # fmt: skip
        return args
    if args[0] == "sample":  # 4: the fewest samples `ddpm eval` accepts (k-NN with k = 3)
        return _set(_set(args, "--num", "4"), "--steps", "3")
    if args[:2] in (["plot", "reverse"], ["plot", "prompts"]):
        return _set(_set(args, "--num", "2"), "--steps", "3")
    if args[0] == "eval":  # few samples and reference images; the memorisation scan is skipped
        flags = [("--ref-num", "64"), ("--memorisation", "0"), ("--cache-dir", "eval_cache")]
        if args[1].startswith("runs/"):  # a model: it samples first
            flags += [("--num", "8"), ("--steps", "3"), ("--bpd-images", "2"),
                      ("--bpd-timesteps", "2")]  # fmt: skip
        for flag, value in flags:
            args = _set(args, flag, value)
        return args
    return args


def _outputs(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--out", "--gif")]


def test_docs_have_commands() -> None:
    tour = commands(ROOT / "docs" / "tour.md")
    assert len(tour) >= 15
    assert {c[0] for c in tour} >= {"train", "sample", "plot"}
    assert {c[1] for c in tour if c[0] == "plot"} == {
        "schedules", "forward", "reverse", "loss", "grids", "prompts",
    }  # fmt: skip
    assert any(any(a.startswith("data.root=") for a in c) for c in tour)  # the folder example


def test_shrink_rewrites_heavy_arguments() -> None:
    imgs = Path("/data/imgs")
    small = shrink(["sample", "r", "--num", "64", "--steps", "50", "--out", "s"], imgs)
    assert small == ["sample", "r", "--num", "4", "--steps", "3", "--out", "s"]
    small = shrink(["train", "--set", 'data.root="~/my pics"', "--steps", "9000"], imgs)
    assert small[:5] == ["train", "--set", 'data.root="/data/imgs"', "--steps", "4"]
    assert "model.base_channels=16" in small
    assert shrink(["train", "s_curve", "--resume"], imgs)[-3:] == ["--steps", "6", "--no-progress"]
    assert shrink(["train", "fashion_text"], imgs)[-6:] == [
        "--set", "data.max_items=64", "--set", "text.align_steps=2", "--set", "text.align_batch=8",
    ]  # fmt: skip
    small = shrink(["plot", "prompts", "r", "--prompt", "a bag", "--out", "p.png"], imgs)
    assert small[-4:] == ["--num", "2", "--steps", "3"]


@pytest.mark.parametrize("doc", RUNNABLE, ids=lambda p: p.name)
def test_every_doc_command_runs(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    imgs = tmp_path / "user_images"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    for cls in ("class_a", "class_b"):  # for the commands with data.class_subfolders=true
        (imgs / cls).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 255, (90 + 7 * i, 70, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(imgs / cls / f"{i}.jpg")
    cmds = commands(doc)
    assert cmds, f"{doc.name} has no ddpm commands"
    for args in cmds:
        small = shrink(args, imgs)
        assert main(small) == 0, f"{doc.name}: ddpm {shlex.join(args)}"
        for out in _outputs(small):
            assert (work / out).exists(), f"{doc.name}: ddpm {shlex.join(args)} wrote no {out}"
    run_doctests(doc)


def test_the_readme_has_a_checked_model_api_example() -> None:
    blocks = doctest_blocks(ROOT / "README.md")
    assert any("ddpmkit.load(" in b and ".sample(" in b for _, b in blocks)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", strip_code(path.read_text()), flags=re.M)}


def _defines(py: Path, name: str) -> bool:
    src = py.read_text()
    return all(re.search(rf"^\s*(def|class) {re.escape(n)}\b", src, re.M) for n in name.split("."))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_and_images_exist(doc: Path) -> None:
    text = strip_code(doc.read_text())
    links = re.findall(r"\[([^\]]*)\]\(([^)\s]+)\)", text)
    links += [("", src) for src in re.findall(r"<img [^>]*src=\"([^\"]+)\"", text)]
    assert links or doc.name != "tour.md"
    for label, target in links:
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part) if file_part else doc
        assert dest.exists(), f"{doc.name} links to missing {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{doc.name}: no heading for #{anchor} in {dest.name}"
        if dest.suffix == ".py":
            for name in re.findall(r"`([A-Za-z_][\w.]*)`", label):
                assert _defines(dest, name), f"{doc.name}: {file_part} defines no {name!r}"


def test_figures_are_small_pngs_and_used() -> None:
    figures = sorted((ROOT / "docs" / "figures").glob("*"))
    assert figures
    used = "\n".join(d.read_text() for d in DOCS)
    for fig in figures:
        with Image.open(fig) as im:
            assert im.format == "PNG", fig.name
            im.load()
        assert fig.stat().st_size < 300_000, f"{fig.name}: {fig.stat().st_size} bytes"
        assert f"figures/{fig.name}" in used, f"{fig.name} is not used by any document"
