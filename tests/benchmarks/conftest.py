"""Shared fixtures of the benchmark tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _keep_threads():
    """The benchmarks set their own thread count in this process; the other tests must not inherit it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
