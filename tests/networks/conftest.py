"""Fixtures of the network tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    # On a loaded 2-core machine two OpenMP threads stall on each other's barriers: a few NLCEN training steps took
    # 5x longer with 2 threads than with 1. These tests check values, not speed.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
