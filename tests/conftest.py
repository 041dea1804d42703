"""Shared test fixtures.

Tests that read the real data in ``../shared/data`` use the ``shared_dataset`` fixture. In a user's clone without that
folder they skip with the reason; ``.ci/run`` sets ``MONAI_ADVSEG_REQUIRE_DATA=1`` so that a missing folder fails the
run instead of silently skipping it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MONAI_ADVSEG_DATA", REPO_ROOT.parent / "shared" / "data"))
REQUIRE_DATA = os.environ.get("MONAI_ADVSEG_REQUIRE_DATA", "0") == "1"


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_dataset() -> Callable[[str], Path]:
    """Return a function mapping a data set name (a folder of ``../shared/data``) to its path, or skip/fail."""

    def _get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_dir():
            message = f"real data set {name!r} not found at {path} (set MONAI_ADVSEG_DATA to its parent folder)"
            if REQUIRE_DATA:
                pytest.fail(message + "; MONAI_ADVSEG_REQUIRE_DATA=1 forbids skipping")
            pytest.skip(message)
        return path

    return _get


def _bundle_tree() -> set[Path]:
    return {path for path in (REPO_ROOT / "bundles").rglob("*") if "__pycache__" not in path.parts}


@pytest.fixture(scope="session", autouse=True)
def _source_tree_stays_clean():
    """Tests write to temporary folders only: a bundle's default ``models/`` or ``eval/`` appearing in the checkout
    means some test ran a bundle without redirecting its outputs."""
    before = _bundle_tree()
    yield
    added = sorted(str(path.relative_to(REPO_ROOT)) for path in _bundle_tree() - before)
    assert added == [], f"tests wrote into the bundle folders: {added[:10]}"
