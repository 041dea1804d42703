"""``python -m monai_advseg.data.datalist`` split options: ``--val-fraction`` sizes and ``--seed`` reproducibility."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_advseg.data.datalist import main

N_CASES = 10


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """Ten tiny NIfTI images with same-named labels in ``images/`` and ``labels/``."""
    root = tmp_path_factory.mktemp("cases")
    for folder in ("images", "labels"):
        (root / folder).mkdir()
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for i in range(N_CASES):
        nib.save(nib.Nifti1Image(np.full((4, 5, 6), i, np.int16), affine), root / "images" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), affine), root / "labels" / f"case{i}.nii.gz")
    return root


def _split(cases: Path, out: Path, *options: str) -> tuple[list[str], list[str]]:
    assert main([str(cases / "images"), str(cases / "labels"), "-o", str(out), *options]) == 0
    datalist = json.loads(out.read_text())
    for item in datalist["training"] + datalist["validation"]:
        assert Path(item["image"]).name == Path(item["label"]).name  # pairs stay together through the shuffle
    return [Path(i["image"]).name for i in datalist["training"]], [
        Path(i["image"]).name for i in datalist["validation"]
    ]


def test_split_sizes_and_seed_reproducibility(cases, tmp_path, capsys):
    # the real entry point once, in a fresh interpreter
    out = tmp_path / "seed7.json"
    cmd = [sys.executable, "-m", "monai_advseg.data.datalist", str(cases / "images"), str(cases / "labels")]
    done = subprocess.run(
        [*cmd, "-o", str(out), "--val-fraction", "0.3", "--seed", "7"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: 7 training, 3 validation items" in done.stdout
    first = json.loads(out.read_text())
    train, val = (
        [Path(i["image"]).name for i in first["training"]],
        [Path(i["image"]).name for i in first["validation"]],
    )
    assert len(train) == 7 and len(val) == 3
    assert sorted(train + val) == sorted(f"case{i}.nii.gz" for i in range(N_CASES))  # a partition: no loss, no repeat

    assert _split(cases, tmp_path / "again.json", "--val-fraction", "0.3", "--seed", "7") == (train, val)
    other_train, other_val = _split(cases, tmp_path / "seed8.json", "--val-fraction", "0.3", "--seed", "8")
    assert len(other_val) == 3 and sorted(other_val) != sorted(val)
    # sizes: round(fraction * n), at least one validation item for any positive fraction, none by default
    assert [len(_split(cases, tmp_path / f"f{f}.json", "--val-fraction", f)[1]) for f in ("0.5", "0.01")] == [5, 1]
    assert _split(cases, tmp_path / "default.json")[1] == []
    capsys.readouterr()


@pytest.mark.parametrize("fraction", ["1.0", "-0.2"])
def test_out_of_range_val_fraction_exits_1_and_writes_nothing(cases, tmp_path, capsys, fraction):
    out = tmp_path / "datalist.json"
    assert main([str(cases / "images"), str(cases / "labels"), "-o", str(out), "--val-fraction", fraction]) == 1
    assert f"error: val_fraction={float(fraction)}: must be in [0, 1)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
