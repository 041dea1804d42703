"""Shared test fixtures.

Tests that read the real data in ``../shared/data`` use the ``shared_dataset`` fixture (``shared_schema`` for the
bundle schema in ``../shared/schemas``). In a user's clone without that
folder they skip with the reason; ``.ci/run`` sets ``MONAI_ADVSEG_REQUIRE_DATA=1`` so that a missing folder fails the
run instead of silently skipping it.

Tests of code that takes a device ask for the ``device`` fixture: each runs once per available device, always
``cpu`` and also ``cuda`` when CUDA is available. The ``cuda`` instances carry the ``cuda`` mark, so
``pytest -m cuda`` runs exactly them (``benchmarks/gpu_check.sh`` does).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MONAI_ADVSEG_DATA", REPO_ROOT.parent / "shared" / "data"))
REQUIRE_DATA = os.environ.get("MONAI_ADVSEG_REQUIRE_DATA", "0") == "1"
SHARED_SCHEMAS = Path(os.environ.get("MONAI_ADVSEG_SCHEMAS", SHARED_DATA.parent / "schemas"))

try:  # hypothesis is a test extra; without it the property tests fail to import, the rest of the suite still runs
    from hypothesis import settings as hypothesis_settings
except ImportError:  # pragma: no cover
    hypothesis_settings = None
if hypothesis_settings is not None:
    # No example database, so nothing is written into the checkout (no .hypothesis/ folder). No deadline: timings on
    # the shared CPUs vary too much for hypothesis' 200 ms default (the tests keep their example counts small).
    hypothesis_settings.register_profile("monai_advseg", database=None, deadline=None)
    hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "monai_advseg"))
    # Hypothesis also caches the constants it mines from source files under <cwd>/.hypothesis; keep that out too.
    from hypothesis import configuration as hypothesis_configuration

    set_home = getattr(hypothesis_configuration, "set_hypothesis_home_dir", None)
    if set_home is not None and "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
        set_home(Path(tempfile.gettempdir()) / "monai_advseg-hypothesis")


def available_devices() -> list[str]:
    """The devices the ``device`` fixture runs a test on: ``cpu``, then ``cuda`` when CUDA is available."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def device_params() -> list:
    """One ``pytest.param`` per available device name, the ``cuda`` one marked ``cuda``.

    The ``device`` fixture is built from it; use it directly as ``@pytest.mark.parametrize("device_name",
    device_params())`` where a function-scoped fixture does not fit (hypothesis ``@given`` tests), so that those
    instances carry the mark too.
    """
    # the mark lets the GPU check select the CUDA instances alone (pytest -m cuda) without matching test names
    return [
        pytest.param(name, id=name, marks=[pytest.mark.cuda] if name == "cuda" else []) for name in available_devices()
    ]


@pytest.fixture(params=device_params())
def device(request) -> torch.device:
    """A device to run the test on, one test instance per entry of :func:`available_devices`.

    On CUDA, cuDNN is made deterministic (and not autotuned) for the test, so tests that compare two runs of the same
    computation with ``torch.equal`` see the same kernels both times.
    """
    name = request.param
    if name != "cuda":
        yield torch.device(name)
        return
    deterministic, benchmark = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield torch.device("cuda")
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic, benchmark


@pytest.fixture(autouse=True)
def _single_thread_determinism():
    torch.manual_seed(0)
    yield


def _skip_or_fail(message: str) -> None:
    """Skip a test whose shared files are missing, or fail it under ``MONAI_ADVSEG_REQUIRE_DATA=1`` (CI)."""
    if REQUIRE_DATA:
        pytest.fail(message + "; MONAI_ADVSEG_REQUIRE_DATA=1 forbids skipping")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dataset() -> Callable[[str], Path]:
    """Return a function mapping a data set name (a folder of ``../shared/data``) to its path, or skip/fail."""

    def _get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_dir():
            _skip_or_fail(f"real data set {name!r} not found at {path} (set MONAI_ADVSEG_DATA to its parent folder)")
        return path

    return _get


@pytest.fixture(scope="session")
def shared_schema() -> Callable[[str], Path]:
    """Return a function mapping a schema file name (in ``../shared/schemas``, next to the data folder) to its path.

    Like :func:`shared_dataset`: skip when absent, fail instead under ``MONAI_ADVSEG_REQUIRE_DATA=1``. The folder is
    ``MONAI_ADVSEG_SCHEMAS`` when set, else ``schemas`` beside ``MONAI_ADVSEG_DATA``'s folder.
    """

    def _get(name: str) -> Path:
        path = SHARED_SCHEMAS / name
        if not path.is_file():
            _skip_or_fail(f"schema {name!r} not found at {path} (set MONAI_ADVSEG_SCHEMAS to its folder)")
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
