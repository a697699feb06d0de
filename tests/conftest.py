"""Test fixtures: every test starts from a fixed global seed and one torch thread."""

from __future__ import annotations

import pytest
import torch

from detgan.utils import seed_everything


@pytest.fixture(autouse=True)
def _seeded():
    seed_everything(1234)
    torch.set_num_threads(1)
    yield
