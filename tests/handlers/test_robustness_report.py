"""Report writers and the ``python -m monai_advseg.report compare`` command, on hand-made sweep results."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from ignite.engine import Engine

from monai_advseg.handlers import (
    REPORT_FILES,
    RobustnessReportWriter,
    check_report_dir,
    load_robustness_report,
    require_matplotlib,
    write_robustness_reports,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


def _results(network: str, drop: float) -> dict:
    levels = [0.0, 2.0, 8.0, 32.0]
    rows = [
        {
            "setting": "clean" if i == 0 else "attack",
            "eps_levels": level,
            "eps": level / 255,
            "steps": 0,
            "mean_dice": 0.9 - drop * i,
            "std_dice": 0.01,
            "mean_jaccard": 0.8 - drop * i,
            "std_jaccard": 0.02,
            "n_cases": 2,
            "seconds": 0.1,
        }
        for i, level in enumerate(levels)
    ]
    cases = [
        {"case": f"c{j}", "setting": row["setting"], "eps_levels": row["eps_levels"], "eps": row["eps"]}
        | {"dice": float("nan") if j == 1 else row["mean_dice"], "jaccard": row["mean_jaccard"]}
        for row in rows
        for j in range(2)
    ]
    return {
        "format": "monai_advseg.robustness/1",
        "config": {"network": network},
        "attack": {"name": "ifgsm_targeted"},
        "epsilons": {"levels": levels[1:], "input_units": [v / 255 for v in levels[1:]]},
        "metrics": rows,
        "cases": cases,
    }


def test_writers_produce_parseable_files_atomically(tmp_path):
    paths = write_robustness_reports(_results("UNet", 0.1), tmp_path / "new" / "folder")
    written = sorted(set(REPORT_FILES) - {"robustness_gallery.png"})  # the gallery needs the evaluator's images
    assert sorted(paths) == written
    folder = tmp_path / "new" / "folder"
    assert sorted(p.name for p in folder.iterdir()) == written, "no temporary file may remain"
    card = (folder / "robustness.md").read_text()
    assert card.startswith("# Robustness report: UNet under ifgsm_targeted")
    assert "one attack and no gradient-masking diagnostics" in card.splitlines()[2]
    with open(folder / "robustness.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [float(r["mean_dice"]) for r in rows] == pytest.approx([0.9, 0.8, 0.7, 0.6])
    with open(folder / "robustness_cases.csv", newline="") as stream:
        cases = list(csv.DictReader(stream))
    assert len(cases) == 8 and cases[1]["dice"] == "nan"
    report = json.loads((folder / "robustness.json").read_text())  # strict: NaN was written as null
    assert report["cases"][1]["dice"] is None
    assert load_robustness_report(folder / "robustness.json")["metrics"][0]["setting"] == "clean"
    assert (folder / "robustness.png").read_bytes().startswith(PNG_MAGIC)


def test_existing_report_is_not_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("other files do not count")
    check_report_dir(tmp_path)
    write_robustness_reports(_results("UNet", 0.1), tmp_path, plot=False)
    with pytest.raises(FileExistsError, match=str(tmp_path / "robustness.csv")):
        write_robustness_reports(_results("UNet", 0.2), tmp_path, plot=False)
    assert json.loads((tmp_path / "robustness.json").read_text())["metrics"][1]["mean_dice"] == pytest.approx(0.8)
    write_robustness_reports(_results("UNet", 0.2), tmp_path, overwrite=True, plot=False)
    assert json.loads((tmp_path / "robustness.json").read_text())["metrics"][1]["mean_dice"] == pytest.approx(0.7)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        check_report_dir(tmp_path / "file")


def test_handler_writes_on_rank_zero_only(tmp_path):
    engine = Engine(lambda e, b: None)
    engine.state.robustness = _results("UNet", 0.1)
    RobustnessReportWriter(tmp_path / "rank1", plot=False)(_with_rank(engine, 1))
    assert not (tmp_path / "rank1").exists()
    writer = RobustnessReportWriter(tmp_path / "rank0", plot=False)
    writer(_with_rank(engine, 0))
    assert writer.paths["robustness.json"].is_file()


def _with_rank(engine: Engine, rank: int) -> Engine:
    engine.state.rank = rank
    return engine


def test_missing_matplotlib_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        require_matplotlib()


def _compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai_advseg.report", "compare", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_compare_cli_overlays_models(tmp_path):
    inputs = []
    for name, drop in (("unet", 0.2), ("nlcen", 0.02)):
        write_robustness_reports(_results(name, drop), tmp_path / name, plot=False)
        inputs.append(str(tmp_path / name / "robustness.json"))
    figure = tmp_path / "figures" / "compare.png"
    done = _compare(*inputs, "-o", str(figure), "--labels", "U-Net", "NLCEN", "--title", "JSRT")
    assert done.returncode == 0, done.stderr
    assert figure.read_bytes().startswith(PNG_MAGIC) and figure.stat().st_size > 1000
    again = _compare(*inputs, "-o", str(figure))
    assert again.returncode == 1
    assert again.stderr == f"error: {figure}: already exists; pass --overwrite to replace it\n"
    wrong = _compare(*inputs, "-o", str(tmp_path / "x.png"), "--labels", "only-one")
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: --labels: 1 given for 2 reports")
    (tmp_path / "bad.json").write_text(json.dumps({"hello": 1}))
    bad = _compare(str(tmp_path / "bad.json"), "-o", str(tmp_path / "y.png"))
    assert bad.returncode == 1 and "not a monai_advseg robustness report" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1  # one line


def test_empty_cases_appear_in_the_figure_only_when_there_are_some(tmp_path):
    with_empty = _results("UNet", 0.1)
    for i, row in enumerate(with_empty["metrics"]):
        row["n_empty_cases"], row["empty_case_foreground_fraction"] = 1, 0.1 * i
    without = _results("UNet", 0.1)
    for row in without["metrics"]:
        row["n_empty_cases"], row["empty_case_foreground_fraction"] = 0, None
    plain = _results("UNet", 0.1)  # an older report without the fields
    figures = {}
    for name, report in (("with", with_empty), ("without", without), ("plain", plain)):
        figures[name] = write_robustness_reports(report, tmp_path / name)["robustness.png"].read_bytes()
    assert figures["without"] == figures["plain"]
    assert figures["with"] != figures["without"]
    with open(tmp_path / "with" / "robustness.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["n_empty_cases"] for r in rows] == ["1"] * 4
    assert [float(r["empty_case_foreground_fraction"]) for r in rows] == pytest.approx([0, 0.1, 0.2, 0.3])
