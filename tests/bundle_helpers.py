"""Helpers for running bundles in tests: a small real data folder and in-process MONAI bundle workflows."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"


# Removed when the test process exits (before, every bundle test left its folders in the system temp folder).
_SCRATCH = tempfile.TemporaryDirectory(prefix="bundle_outputs_")


def link_subset(source: Path, target: Path, names: list[str], folders=("images", "masks")) -> Path:
    """A data folder holding symbolic links to a few real files (the data itself is never copied)."""
    for folder in folders:
        (target / folder).mkdir(parents=True)
        for path in sorted((source / folder).iterdir()):
            stem = path.name.split(".")[0]
            if stem in names:
                (target / folder / path.name).symlink_to(path)
    return target


def workflow(bundle: str, configs: list[str], workflow_type: str = "train", **overrides) -> ConfigWorkflow:
    root = BUNDLES / bundle
    files = [str(root / "configs" / name) for name in configs]
    # outputs go to a temporary folder unless a test names one: handlers such as TensorBoard's create theirs as soon
    # as they are instantiated, and nothing may be written into the checkout
    for key in ("output_dir", "ckpt_dir"):
        overrides.setdefault(key, tempfile.mkdtemp(prefix=f"{bundle}_{key}_", dir=_SCRATCH.name))
    flow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(root),
        **overrides,
    )
    flow.initialize()
    return flow


def network_def(bundle: str, configs: tuple[str, ...] = ("train.json",), **overrides) -> torch.nn.Module:
    """A bundle's ``network_def`` parsed from its configs, without ``initialize``: ``initialize`` checks every input of
    the run, and a test that only needs the network has no data."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / name) for name in configs])
    parser.update(overrides)
    return parser.get_parsed_content("network_def")


def run_workflow(bundle: str, configs: list[str], workflow_type: str = "train", **overrides) -> ConfigWorkflow:
    flow = workflow(bundle, configs, workflow_type, **overrides)
    flow.run()
    flow.finalize()
    return flow


def bundle_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=cwd or REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bundle_run_args(bundle: str, config: str | list[str] = "train.json", **overrides) -> list[str]:
    """The arguments of ``python -m monai.bundle run`` for one config of ``bundle`` (or several, merged left to right
    as ``"['train.json','evaluate.json']"``), each override as ``--key value`` (values passed as text, as a user
    types them)."""
    files = [str(BUNDLES / bundle / "configs" / name) for name in ([config] if isinstance(config, str) else config)]
    config_file = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    args = ["run", "--config_file", config_file, "--bundle_root", str(BUNDLES / bundle)]
    return args + [arg for key, value in overrides.items() for arg in (f"--{key}", str(value))]


def bundle_torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 -m monai.bundle ARGS`` (gloo on CPU), one intra-op thread per rank so
    that two ranks on a 2-core machine do not oversubscribe it. Fails with the end of the log if a rank fails."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [*torchrun, "-m", "monai.bundle", *args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def assert_dice_and_jaccard_report(metrics_csv: Path) -> None:
    """``evaluate.json``'s ``metrics.csv`` holds exactly mean Dice and mean Jaccard (IoU), and they are consistent."""
    rows = {row[0]: float(row[1]) for row in csv.reader(Path(metrics_csv).open())}
    assert set(rows) == {"val_mean_dice", "val_mean_iou"}
    dice, iou = rows["val_mean_dice"], rows["val_mean_iou"]
    assert 0 <= iou <= dice <= 1  # Jaccard never exceeds Dice for the same masks
    assert dice == pytest.approx(2 * iou / (1 + iou), abs=0.15)  # per-case identity, averaged over few cases
