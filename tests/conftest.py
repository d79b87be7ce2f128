"""Shared fixtures: deterministic torch settings for every test."""

from __future__ import annotations

import os

import pytest
import torch

# Two threads match the CI machine and keep timings stable.
torch.set_num_threads(int(os.environ.get("DDPMKIT_TEST_THREADS", "2")))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
