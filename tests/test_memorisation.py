"""Nearest-training-image search of the memorisation check, against a brute-force loop."""

from __future__ import annotations

import pytest
import torch

from ddpmkit.evaluation.memorisation import (
    check_memorisation,
    nearest_neighbours,
    summarise_distances,
)


def brute_force(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = samples.reshape(samples.shape[0], -1).double()
    b = train.reshape(train.shape[0], -1).double()
    dist, idx = [], []
    for row in a:
        d = [float(((row - t) ** 2).sum().sqrt()) for t in b]
        j = min(range(len(d)), key=lambda k: (d[k], k))  # smallest index among ties
        dist.append(d[j])
        idx.append(j)
    return torch.tensor(dist, dtype=torch.float64), torch.tensor(idx)


@pytest.mark.parametrize("block", [1, 3, 7, 2048])
def test_matches_brute_force_on_random_features(block: int) -> None:
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(13, 5, generator=g)
    train = torch.randn(29, 5, generator=g)
    dist, idx = nearest_neighbours(samples, train, block=block)
    ref_d, ref_i = brute_force(samples, train)
    assert dist.dtype == torch.float64 and idx.dtype == torch.int64
    torch.testing.assert_close(dist, ref_d, rtol=1e-9, atol=1e-9)
    assert torch.equal(idx, ref_i)


def test_matches_brute_force_on_uint8_images_in_blocks() -> None:
    g = torch.Generator().manual_seed(1)
    samples = torch.randint(0, 256, (11, 1, 6, 6), generator=g, dtype=torch.uint8)
    train = torch.randint(0, 256, (40, 1, 6, 6), generator=g, dtype=torch.uint8)
    dist, idx = nearest_neighbours(samples, train, block=4)
    ref_d, ref_i = brute_force(samples, train)
    torch.testing.assert_close(dist, ref_d, rtol=0, atol=1e-9)  # integer pixels: exact
    assert torch.equal(idx, ref_i)


def test_copied_sample_has_distance_zero_and_the_right_index() -> None:
    g = torch.Generator().manual_seed(2)
    train = torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8)
    noise = torch.randint(0, 256, (4, 3, 8, 8), generator=g, dtype=torch.uint8)
    samples = torch.cat([noise[:2], train[37:38], noise[2:], train[5:6]])
    dist, idx = nearest_neighbours(samples, train, block=16)
    assert dist[2].item() == 0.0 and idx[2].item() == 37
    assert dist[5].item() == 0.0 and idx[5].item() == 5
    assert (dist[[0, 1, 3, 4]] > 0).all()
    m = check_memorisation(samples, train, block=16)
    assert m.pixel_dist[2].item() == 0.0 and int(m.pixel_index[5]) == 5
    assert m.closest(2).tolist() == [2, 5]  # exact copies first, stable order


def test_duplicate_training_images_give_the_smallest_index() -> None:
    train = torch.zeros(10, 4)
    train[3] = train[7] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    for block in (2, 3, 4, 100):  # duplicates in one block and across blocks
        dist, idx = nearest_neighbours(train[7:8].clone(), train, block=block)
        assert idx.item() == 3 and dist.item() == 0.0


def test_pixel_and_feature_distances() -> None:
    g = torch.Generator().manual_seed(3)
    train = torch.randint(0, 256, (20, 1, 4, 4), generator=g, dtype=torch.uint8)
    samples = train[:3].clone()
    samples[1, 0, 0, 0] = 255 - int(samples[1, 0, 0, 0])  # one pixel changed
    tf = torch.randn(20, 6, generator=g)
    sf = tf[[4, 9, 11]] + 0.0
    m = check_memorisation(samples, train, sample_features=sf, train_features=tf)
    # Sample 1 is train[1] with one pixel p flipped to 255 - p: |255 - 2p| / 255 from train[1];
    # the nearest image and its distance by a plain loop over the training set in [0, 1].
    diff = abs(255 - 2 * int(train[1, 0, 0, 0])) / 255.0
    s1 = [v / 255.0 for v in samples[1].flatten().tolist()]
    dists = [
        sum((a - b / 255.0) ** 2 for a, b in zip(s1, img.flatten().tolist(), strict=True)) ** 0.5
        for img in train
    ]
    j = min(range(len(dists)), key=lambda k: (dists[k], k))
    assert dists[1] == pytest.approx(diff, abs=1e-12)
    assert m.pixel_dist[1].item() == pytest.approx(dists[j], abs=1e-12)
    assert int(m.pixel_index[1]) == j
    assert m.pixel_dist[0].item() == 0.0 and m.pixel_dist[2].item() == 0.0
    assert m.feature_index is not None and m.feature_dist is not None
    assert m.feature_index.tolist() == [4, 9, 11]
    assert float(m.feature_dist.abs().max()) < 1e-6


def test_errors_and_summary() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="at least one"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="uint8"):
        check_memorisation(torch.zeros(2, 1, 2, 2), torch.zeros(3, 1, 2, 2))
    s = summarise_distances(torch.arange(101, dtype=torch.float64))
    assert s == {"min": 0.0, "p01": 1.0, "median": 50.0, "mean": 50.0, "max": 100.0}
