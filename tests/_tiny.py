"""Shared flag lists of tiny runs, for test modules that need the same run (test modules do not
import each other: a bare ``pytest`` cannot import ``tests.test_x``)."""

from __future__ import annotations

__all__ = ["TINY_DIGITS_UNET", "TINY_LABEL_UNET"]

# A class-conditional U-Net on the 8x8 digits, T = 100: the fashion_mnist preset shrunk to
# seconds per run (tests/test_cli_e2e.py, tests/test_cli_eval.py, tests/test_text_train.py).
TINY_DIGITS_UNET = [
    "--set", 'data.name="digits"',
    "--set", "model.base_channels=16",
    "--set", "model.channel_mults=[1, 2]",
    "--set", "model.attention_resolutions=[4]",
    "--set", "model.groups=4",
    "--set", "model.num_res_blocks=1",
    "--set", "diffusion.num_steps=100",
    "--set", "train.batch_size=32",
]  # fmt: skip

# ... with logs every 5 steps, grids and checkpoints every 10 (two kept), 5-step samples
TINY_LABEL_UNET = [
    *TINY_DIGITS_UNET,
    "--set", "train.log_every=5",
    "--set", "train.sample_every=10",
    "--set", "train.checkpoint_every=10",
    "--set", "train.keep_checkpoints=2",
    "--set", "sample.steps=5",
    "--set", "sample.num=20",
]  # fmt: skip
