"""Our command-line entry points answer bad input with ``error: <file or value>: <what is wrong>`` lines and exit
status 1, no traceback, nothing written; ``--debug`` or MONAI_ADVSEG_DEBUG=1 shows the traceback; anything else keeps
its traceback. The cheap cases run in-process over every kind of bad slice folder; a few run as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bad_slices import KINDS, break_slice_folder
from bundle_helpers import link_subset

from monai_advseg.cli import DEBUG_ENV, entry_point
from monai_advseg.data import InputError
from monai_advseg.data.datalist import main as datalist_main
from monai_advseg.demo import DEMO_OUTPUTS
from monai_advseg.demo import main as demo_main
from monai_advseg.report import main as report_main

NAMES = ["0", "1", "2", "3"]


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------- the wrapper itself
@entry_point
def _command(argv):
    """A command that fails the way its first argument says."""
    if argv[0] == "input":
        raise InputError(["a.png: not a readable image file", "b.png: mask values 0, 7; expected only {0, 255}"])
    if argv[0] == "value":
        raise ValueError("shape mismatch inside a network")  # not declared an input error: a bug
    if argv[0] == "oserror":
        raise PermissionError(13, "Permission denied", "/data/x.png")
    return 0


_reading_command = entry_point(input_errors=(OSError,))(_command.__wrapped__)  # InputError is always caught


def test_an_input_error_is_one_error_line_per_problem_and_exit_1(capsys):
    assert _command(["input"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "error: a.png: not a readable image file\nerror: b.png: mask values 0, 7; expected only {0, 255}\n"


def test_other_exceptions_keep_their_traceback(capsys):
    with pytest.raises(ValueError, match="inside a network"):
        _command(["value"])
    assert capsys.readouterr().err == ""


def test_declared_os_errors_name_the_file(capsys):
    with pytest.raises(PermissionError):
        _command(["oserror"])  # not declared by this command
    assert _reading_command(["oserror"]) == 1
    assert capsys.readouterr().err == "error: /data/x.png: Permission denied\n"
    assert _reading_command(["input"]) == 1
    assert capsys.readouterr().err.startswith("error: a.png: not a readable image file\n")


def test_debug_switch_and_environment_show_the_traceback(monkeypatch, capsys):
    with pytest.raises(InputError):
        _command(["input", "--debug"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(InputError):
        _command(["input"])
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert _command(["input"]) == 1
    assert capsys.readouterr().err.count("error:") == 2


# ------------------------------------------------------------------------------------------- the demo
@pytest.fixture
def slices(shared_dataset, tmp_path):
    source = shared_dataset("ct_covid_medseg_infnet") / "train"
    return source, link_subset(source, tmp_path / "data", NAMES)


@pytest.mark.real_data
@pytest.mark.parametrize("kind", KINDS)
def test_demo_on_a_bad_slice_folder_prints_one_error_line_and_writes_nothing(slices, tmp_path, kind, capsys):
    source, data = slices
    bad, reason = break_slice_folder(kind, data, NAMES[2], source)
    out = tmp_path / "out"
    assert demo_main(["--dataset_dir", str(data), "--output_dir", str(out), "--quick"]) == 1
    stdout, stderr = capsys.readouterr()
    assert stderr.startswith(f"error: {bad}: ") and reason in stderr, stderr
    assert len(stderr.splitlines()) == 1 and stdout == ""  # no log line repeating it, no progress
    assert not out.exists()


@pytest.mark.real_data
def test_demo_lists_every_bad_slice_and_keeps_an_earlier_output(slices, tmp_path, capsys):
    source, data = slices
    found = [
        break_slice_folder(k, data, n, source) for k, n in zip(("rgb_mask", "not_an_image"), NAMES[:2], strict=True)
    ]
    earlier = tmp_path / "out"
    earlier.mkdir()
    (earlier / "summary.json").write_text("{}")
    assert "summary.json" in DEMO_OUTPUTS  # what --overwrite would replace
    assert demo_main(["--dataset_dir", str(data), "--output_dir", str(earlier), "--overwrite", "--quick"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[1] for line in lines] == [str(bad) for bad, _ in found]
    assert all(reason in line for line, (_, reason) in zip(lines, found, strict=True))
    assert sorted(p.name for p in earlier.iterdir()) == ["summary.json"]  # checked before anything is replaced


def test_demo_refuses_a_file_as_output_dir(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert demo_main(["--output_dir", str(tmp_path / "file")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'file'}: --output_dir is a file, not a folder\n"


@pytest.mark.real_data
def test_demo_from_the_command_line_the_issue_case(slices, tmp_path):
    """As a user runs it: a folder whose ``images/*.png`` are not images, and an empty folder."""
    source, data = slices
    (data / "images" / "a5.png").write_text("not a png")
    (data / "masks" / "a5.png").symlink_to(source / "masks" / "0.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    command = [sys.executable, "-m", "monai_advseg", "demo", "--output_dir", str(tmp_path / "out")]
    env = {key: value for key, value in os.environ.items() if key != DEBUG_ENV}
    for dataset, expected in (
        (data, f"error: {data / 'images' / 'a5.png'}: not a readable image file (UnidentifiedImageError"),
        (empty, f"error: {empty / 'images'}: image folder not found"),
    ):
        done = subprocess.run([*command, "--dataset_dir", str(dataset)], capture_output=True, text=True, env=env)
        assert done.returncode == 1 and done.stderr.startswith(expected), done.stderr[-2000:]
        assert "Traceback" not in done.stderr and len(_error_lines(done.stderr)) == 1
    debug = subprocess.run([*command, "--dataset_dir", str(empty), "--debug"], capture_output=True, text=True, env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert debug.stderr.rstrip().endswith(f"MissingInputError: {empty / 'images'}: image folder not found")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- the datalist CLI
def _volume(path: Path, shape=(6, 5, 4), dtype=np.int16) -> Path:
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4)), path)
    return path


def _bad_volumes(kind: str, root: Path) -> tuple[list[str], Path, str]:
    """Arguments of the datalist CLI with one bad input of ``kind``, the path its error names, and the reason."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    _volume(root / "images" / "a.nii.gz")
    _volume(root / "labels" / "a.nii.gz", dtype=np.uint8)
    if kind == "truncated":
        data = (root / "images" / "a.nii.gz").read_bytes()
        (root / "images" / "b.nii.gz").write_bytes(data[:60])
        return [str(root / "images")], root / "images" / "b.nii.gz", "not a readable NIfTI file"
    if kind == "unmatched":
        _volume(root / "images" / "b.nii.gz")
        return [str(root / "images"), str(root / "labels")], root / "labels", "no label named like 1 image(s)"
    if kind == "label_shape":
        _volume(root / "labels" / "a.nii.gz", shape=(6, 5, 3), dtype=np.uint8)
        return [str(root / "images"), str(root / "labels")], root / "labels" / "a.nii.gz", "label shape (6, 5, 3)"
    if kind == "missing":
        return [str(root / "nothing")], root / "nothing", "image path not found"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "unmatched", "label_shape", "missing"])
def test_datalist_cli_prints_one_error_line_and_writes_nothing(tmp_path, kind, capsys):
    args, bad, reason = _bad_volumes(kind, tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    assert datalist_main([*args, "-o", str(out / "datalist.json")]) == 1
    stdout, stderr = capsys.readouterr()
    errors = _error_lines(stderr)
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: ") and reason in errors[0], stderr
    assert "bad input" not in stderr and stdout == ""
    assert list(out.iterdir()) == []


def test_datalist_cli_debug_shows_the_traceback(tmp_path):
    args, _, _ = _bad_volumes("missing", tmp_path / "in")
    with pytest.raises(FileNotFoundError, match="image path not found"):
        datalist_main([*args, "-o", str(tmp_path / "x.json"), "--debug"])
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------------------------------- report compare
def test_report_compare_names_every_bad_report_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "broken.json").write_text('{"metrics": [')
    (tmp_path / "other.json").write_text('{"hello": 1}')
    reports = [tmp_path / "broken.json", tmp_path / "missing.json", tmp_path / "other.json"]
    figure = tmp_path / "figure.png"
    assert report_main(["compare", *map(str, reports), "-o", str(figure)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"error: {reports[0]}: not a JSON file (")
    assert lines[1] == f"error: {reports[1]}: report file not found"
    assert lines[2].startswith(f"error: {reports[2]}") and "not a monai_advseg robustness report" in lines[2]
    assert len(lines) == 3 and not figure.exists()
