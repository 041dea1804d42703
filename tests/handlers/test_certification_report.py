"""The certification report as a pure function of per-case arrays, its check, and its writers."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from monai_advseg.handlers import (
    build_certification_report,
    certification_check,
    load_certification_report,
    write_certification_reports,
)

RADII = [0.0, 0.1, 0.2]


def _report(**kwargs):
    dice = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.0], [math.nan, math.nan, math.nan]])
    settings = dict(
        radii=RADII,
        certification={"sigma": 0.25, "n0": 2, "n": 8, "alpha": 0.001, "tau": None, "correction": "bonferroni"},
        config={"network": "UNet"},
        seconds={"total_seconds": 1.0},
    )
    settings.update(kwargs)
    return build_certification_report(
        ["a", "b", "empty"],
        dice,
        dice / 2,
        np.array([[1.0, 0.9, 0.2], [0.95, 0.8, 0.1], [1.0, 1.0, 1.0]]),
        np.array([0.0, 0.05, 0.0]),
        np.array([0.95, 0.75, math.nan]),
        **settings,
    )


def test_rows_are_means_over_the_scored_cases():
    report = _report()
    rows = report["metrics"]
    assert [r["radius"] for r in rows] == RADII
    assert [r["certified_dice"] for r in rows] == pytest.approx([0.8, 0.7, 0.05])
    assert rows[0]["std_certified_dice"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert [r["n_cases"] for r in rows] == [2, 2, 2]  # the case without a scored class is left out
    assert rows[1]["certified_fraction"] == pytest.approx((0.9 + 0.8 + 1.0) / 3)
    assert rows[0]["abstain_rate"] == pytest.approx(0.05 / 3)
    assert report["base"]["dice"] == pytest.approx(0.85)
    assert all(r["attack_dice_base"] is None for r in rows)
    assert len(report["cases"]) == 9 and report["cases"][3] == {
        "case": "a",
        "radius": 0.1,
        "certified_dice": 0.8,
        "certified_jaccard": 0.4,
        "certified_fraction": 0.9,
        "abstain_rate": 0.0,
        "base_dice": 0.95,
        "attack_dice_base": None,
        "attack_dice_smoothed": None,
    }
    assert report["check"]["passed"] is None


@pytest.mark.parametrize(
    "smoothed, passed, worst",
    [
        ([[0.85, 0.3], [0.65, 0.1]], True, (-0.05, 0.1, "a")),  # every case at or above its certificate
        ([[0.85, 0.3], [0.5, 0.1]], False, (0.1, 0.1, "b")),
        ([[0.95, 0.3], [0.55, 0.1]], False, (0.05, 0.1, "b")),  # the means pass (0.75 >= 0.7); case b does not
    ],
)
def test_a_certified_dice_above_the_attacked_smoothed_dice_fails_the_check(smoothed, passed, worst):
    attacked = np.array([*smoothed, [math.nan, math.nan]])
    report = _report(
        attack={"name": "pgd_l2"},
        attack_radii=[0.1, 0.2],
        attack_dice_base=np.array([[0.3, 0.1], [0.2, 0.0], [math.nan, math.nan]]),
        attack_dice_smoothed=attacked,
        flipped=[0, 3],
        certified_voxels=[100, 20],
    )
    check = report["check"]
    assert check["passed"] is passed
    assert (check["largest_excess"], check["at_radius"], check["at_case"]) == pytest.approx(worst)
    assert check["cases_above"] == (0 if passed else 1) and check["rows"][0]["cases_above"] == check["cases_above"]
    assert check["flipped_certified_voxels"] == 3 and check["rows"][1]["certified_voxels"] == 20
    rows = report["metrics"]
    assert rows[0]["attack_dice_smoothed"] is None  # radius 0 was not attacked
    assert rows[1]["attack_dice_base"] == pytest.approx(0.25)
    assert rows[1]["attack_dice_smoothed"] == pytest.approx(np.mean([smoothed[0][0], smoothed[1][0]]))


def test_check_tolerance():
    check = certification_check([0.1], [0.52], [0.1], [0.5], tolerance=0.05)
    assert check["passed"] is True and check["largest_excess"] == pytest.approx(0.02)
    assert certification_check([0.1], [0.52], [0.1], [0.5])["passed"] is False


def test_writer_writes_strict_json_and_refuses_to_overwrite(tmp_path):
    report = _report()
    written = write_certification_reports(report, tmp_path, plot=False)
    assert set(written) == {"certify.json", "certify.csv", "certify_cases.csv"}
    loaded = load_certification_report(tmp_path / "certify.json")  # strict JSON: NaN became null
    assert loaded["cases"][2]["certified_dice"] is None
    with (tmp_path / "certify.csv").open() as stream:
        header = next(csv.reader(stream))
    assert header[:3] == ["radius", "certified_dice", "std_certified_dice"]
    before = (tmp_path / "certify.json").read_bytes()
    with pytest.raises(FileExistsError, match="certification report"):
        write_certification_reports(report, tmp_path, plot=False)
    assert (tmp_path / "certify.json").read_bytes() == before
    (tmp_path / "other.json").write_text(json.dumps({"format": "monai_advseg.robustness/1"}))
    with pytest.raises(ValueError, match="not a monai_advseg certification report"):
        load_certification_report(tmp_path / "other.json")
