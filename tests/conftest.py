"""Shared fixtures: deterministic torch settings for every test."""

from __future__ import annotations

import os

import pytest
import torch

# The CI machine has 2 cores. Under pytest-xdist (-n 2) each worker gets one thread so the two
# workers do not oversubscribe the cores; a plain pytest run uses both. DDPMKIT_TEST_THREADS
# overrides either.
_default_threads = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
torch.set_num_threads(int(os.environ.get("DDPMKIT_TEST_THREADS", _default_threads)))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
