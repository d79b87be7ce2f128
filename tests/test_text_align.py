"""Contrastive text alignment (text.align_steps, ddpmkit.training.text_align) and the attention pool
of the text tokens (model.unet.text_pooling = "attention")."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ddpmkit.cli import main
from ddpmkit.nn.blocks import TokenPool
from ddpmkit.nn.unet import UNet, UNetConfig
from ddpmkit.training.callbacks import Callback
from ddpmkit.training.config import load_config
from ddpmkit.training.loop import train
from ddpmkit.training.text_align import align_text_side, contrastive_loss, text_side_parameters
from test_text_train import CAPTIONS, TINY, _folder


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_mirrors_equal_to_the_images_add_exactly_log2_to_the_text_side() -> None:
    # Distinct captions: the loss without mirrors is CLIP's, cross-entropy on the diagonal.
    # A mirror identical to its image doubles every text row's partition sum: + log 2 on the
    # text -> image half, so + log(2) / 2 on the mean of the halves.
    zt, zi = _unit(6, 8, seed=0), _unit(6, 8, seed=1)
    scale = torch.tensor(7.0)
    ids = torch.arange(6)
    clip = (F.cross_entropy(scale * zt @ zi.T, ids) + F.cross_entropy(scale * zi @ zt.T, ids)) / 2
    got = contrastive_loss(zt, zi, zi, ids, scale)
    assert torch.allclose(got, clip + math.log(2) / 2, atol=1e-6)


def test_rows_with_the_same_caption_are_all_positives() -> None:
    zt, zi, zm = _unit(5, 4, seed=2), _unit(5, 4, seed=3), _unit(5, 4, seed=4)
    ids, scale = torch.tensor([0, 1, 0, 2, 1]), 3.0
    # per row, a loop: -mean over the row's positives of log softmax, over the allowed columns
    cols_t = torch.cat([zi, zm])
    lt, li = [], []
    for i in range(5):
        pos = [j for j in range(5) if ids[j] == ids[i]]
        row_t = [scale * float(zt[i] @ c) for c in cols_t]
        lse_t = math.log(sum(math.exp(v) for v in row_t))
        lt.append(-sum(row_t[j] - lse_t for j in pos) / len(pos))
        row_i = [scale * float(zi[i] @ zt[j]) for j in range(5)]
        lse_i = math.log(sum(math.exp(v) for v in row_i))
        li.append(-sum(row_i[j] - lse_i for j in pos) / len(pos))
    want = (sum(lt) / 5 + sum(li) / 5) / 2
    assert float(contrastive_loss(zt, zi, zm, ids, torch.tensor(scale))) == pytest.approx(want)


def test_token_pool_of_one_token_is_the_projected_value_and_ignores_padding() -> None:
    torch.manual_seed(0)
    pool = TokenPool(8)
    t = torch.randn(3, 5, 8)
    one = torch.zeros(3, 5, dtype=torch.bool)
    one[:, 2] = True  # one real token: softmax weight 1
    with torch.no_grad():
        v = pool.kv(t[:, 2]).chunk(2, dim=-1)[1]
        assert torch.allclose(pool(t, one), pool.out(v), atol=1e-6)
        mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
        a = pool(t, mask)
        junk = t.clone()
        junk[~mask] = torch.randn(int((~mask).sum()), 8) * 100
        assert torch.allclose(a[:2], pool(junk, mask)[:2], atol=1e-5)  # padding changes nothing
        assert torch.isfinite(a).all()  # an all-masked row stays finite


def _text_unet(**kw: Any) -> UNet:
    cfg = UNetConfig(
        image_size=(8, 16), base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), groups=4, num_heads=2, text_dim=12, **kw,
    )  # fmt: skip
    return UNet(cfg).eval()


def test_attention_pooling_reads_the_tokens_not_the_encoders_pooled_vector() -> None:
    torch.manual_seed(0)
    # with the refiner (token positions added), so the pool sees the tokens' order
    net = _text_unet(text_pooling="attention", cross_attention_resolutions=(4,),
                     text_refiner_layers=1)  # fmt: skip
    x, t = torch.randn(2, 1, 8, 16), torch.tensor([5, 700])
    tok, mask = torch.randn(2, 4, 12), torch.ones(2, 4, dtype=torch.bool)
    emb0 = torch.zeros(2, net.text_null_pooled.shape[0])
    with torch.no_grad():
        a = net(x, t, text=(tok, mask, torch.randn(2, 12)))
        b = net(x, t, text=(tok, mask, torch.randn(2, 12)))
        emb_a, _, _ = net._text(x, emb0, None, (tok, mask, torch.zeros(2, 12)))
        emb_b, _, _ = net._text(x, emb0, None, (tok.flip(1), mask, torch.zeros(2, 12)))
    assert torch.allclose(a, b)  # the encoder's pooled vector is not used
    assert not torch.allclose(emb_a, emb_b)  # the added vector comes from the tokens, in order


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"text_pooling": "mean"}, "text_pooling must be"),
        ({"text_pooling": "attention", "text_conditioning": "add"}, "needs text_conditioning"),
    ],
)
def test_bad_pooling_settings_are_one_line_errors(kw: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as e:
        _text_unet(**kw)
    assert "\n" not in str(e.value)


def _align_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "fashion_mnist", "--out", str(out), "--steps", "6", "--no-progress", *TINY,
        "--set", f'data.root="{root}"', "--set", 'model.unet.text_pooling="attention"',
        "--set", "model.unet.text_refiner_layers=1", *extra,
    ]  # fmt: skip


def test_align_steps_without_the_attention_pool_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "images")
    out = tmp_path / "run"
    args = ["train", "fashion_mnist", "--out", str(out), "--steps", "6", "--no-progress", *TINY,
            "--set", f'data.root="{root}"', "--set", "text.align_steps=10"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "text_pooling = 'attention'" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_alignment_learns_left_from_right_and_the_text_side_stays_frozen(tmp_path: Path) -> None:
    root = _folder(tmp_path / "images")
    args = _align_args(root, tmp_path / "run", "--set", "text.align_steps=150",
                       "--set", "text.align_batch=24")  # fmt: skip
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    cfg = load_config("fashion_mnist", [*sets, f'out_dir="{tmp_path / "run"}"', "train.steps=6"])

    class Snap(Callback):
        def on_start(self, trainer: Any) -> None:
            self.first = [p.detach().clone() for p in text_side_parameters(trainer.run.model.net)]
            self.conv = trainer.run.model.net.conv_in.weight.detach().clone()

        def on_end(self, trainer: Any) -> None:
            self.last = [p.detach().clone() for p in text_side_parameters(trainer.run.model.net)]
            self.conv_last = trainer.run.model.net.conv_in.weight.detach().clone()

    snap = Snap()
    train(cfg, progress=False, log=lambda _m: None, extra_callbacks=[snap])
    meta = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    stats = meta["text_align"]
    assert stats["steps"] == 150 and stats["frozen"] is True
    # "on the left" / "on the right" captions can beat their image's mirror only by reading
    # the word; "a dark image" is a tie at best, so 2/3 of the rows carry the signal
    assert stats["mirror_accuracy"] > 0.75
    assert all(torch.equal(a, b) for a, b in zip(snap.first, snap.last))  # frozen
    assert not torch.equal(snap.conv, snap.conv_last)  # the rest trained


def test_the_aligner_tells_each_side_caption_its_image_from_the_mirror() -> None:
    # Two captions, "... on the left" / "... on the right", for images with a square on that
    # side. A text side that gave both captions one vector would pick the image over its
    # mirror for one caption and the mirror for the other (about half the rows); all rows right
    # means the text side tells the two captions apart by the word that names the side.
    from ddpmkit.text import build_text_encoder, encode_all, vocabulary_of
    from ddpmkit.text.conditioned import TextConditioned

    torch.manual_seed(0)
    net = UNet(UNetConfig(
        image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), groups=4, num_heads=2, text_dim=16,
        text_pooling="attention", text_refiner_layers=1,
    ))  # fmt: skip
    enc = build_text_encoder("tiny", vocabulary=vocabulary_of(CAPTIONS), dim=16, log=print)
    model = TextConditioned(net, encode_all(enc, CAPTIONS))
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(48) % 2  # left, right
    images = torch.randint(0, 30, (48, 1, 8, 8), generator=g, dtype=torch.uint8)
    for i, k in enumerate(ids.tolist()):
        images[i, 0, 2:6, 4 * k : 4 * k + 4] = 255
    stats, aligner = align_text_side(model, images, ids, steps=120, batch_size=16, log=None)
    assert aligner.mirror_accuracy(ids, images) >= 0.95
    assert stats["frozen"] and not any(p.requires_grad for p in text_side_parameters(net))
