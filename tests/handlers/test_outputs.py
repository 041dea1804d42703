"""The checks that keep a run from replacing an earlier run's files: checkpoint files, metric CSVs, saved masks."""

from __future__ import annotations

import pytest
from monai.handlers import MetricsSaver
from monai.transforms import Compose, Identityd, SaveImaged

from monai_advseg.handlers import check_checkpoint_files, check_new_files, metrics_saver_files, saved_image_files


def test_fresh_run_refuses_existing_checkpoints_unless_resuming_or_overwriting(tmp_path):
    checkpoint, model = tmp_path / "checkpoint.pt", tmp_path / "model.pt"
    assert check_checkpoint_files(checkpoint, [model]) == []  # nothing there yet
    model.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="--overwrite true .*--resume true needs .*checkpoint.pt"):
        check_checkpoint_files(checkpoint, [model], resume="false")
    with pytest.raises(FileExistsError):  # auto without a resume file starts afresh, so it would replace model.pt
        check_checkpoint_files(checkpoint, [model], resume="auto")
    checkpoint.write_bytes(b"x")
    with pytest.raises(FileExistsError, match=f"{checkpoint}, {model}; pass --resume true to continue"):
        check_checkpoint_files(checkpoint, [model], resume=False)
    assert check_checkpoint_files(checkpoint, [model], resume="true") == []
    assert check_checkpoint_files(checkpoint, [model], resume="auto") == []
    assert check_checkpoint_files(checkpoint, [model], overwrite="true") == [checkpoint, model]
    with pytest.raises(ValueError, match="contradict"):
        check_checkpoint_files(checkpoint, [model], resume="auto", overwrite=True)
    with pytest.raises(ValueError, match="overwrite must be true or false"):
        check_checkpoint_files(checkpoint, [model], overwrite="replace")


def test_check_new_files_names_existing_files_and_folders(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "b.csv").mkdir()
    with pytest.raises(IsADirectoryError, match="b.csv"):
        check_new_files([tmp_path / "a.csv", tmp_path / "b.csv"], overwrite=True)
    with pytest.raises(FileExistsError, match=f"1 output file.*{tmp_path / 'a.csv'}"):
        check_new_files([tmp_path / "a.csv", tmp_path / "c.csv"])
    assert check_new_files([tmp_path / "a.csv"], overwrite="true") == [tmp_path / "a.csv"]


def test_metrics_saver_files_follow_the_saver_settings(tmp_path):
    saver = MetricsSaver(save_dir=str(tmp_path), metrics=["dice"], metric_details=["dice", "iou"], summary_ops="*")
    names = [p.name for p in metrics_saver_files(saver)]
    assert names == ["metrics.csv", "dice_raw.csv", "dice_summary.csv", "iou_raw.csv", "iou_summary.csv"]
    saver = MetricsSaver(save_dir=str(tmp_path), metrics=None, metric_details=["dice"], summary_ops=None)
    assert [p.name for p in metrics_saver_files(saver)] == ["dice_raw.csv"]
    (tmp_path / "old_raw.csv").write_text("x")  # with "*" the names are unknown: the existing ones count
    saver = MetricsSaver(save_dir=str(tmp_path), metrics="*", metric_details="*", summary_ops=None)
    assert [p.name for p in metrics_saver_files(saver)] == ["metrics.csv", "old_raw.csv"]


def test_saved_image_files_match_monai_names_create_nothing_and_refuse_collisions(tmp_path):
    out = tmp_path / "out"
    save = SaveImaged(keys="pred", output_dir=str(out), output_postfix="seg", output_ext=".png", separate_folder=False)
    post = Compose([Identityd(keys="pred"), Compose([save])])
    items = [{"image": "/data/a/0.jpg"}, {"image": "/data/a/1.nii.gz"}]
    assert saved_image_files(items, post) == [out / "0_seg.png", out / "1_seg.png"]
    assert saved_image_files("/data/x.png", save) == [out / "x_seg.png"]
    assert not out.exists()  # MONAI's layout would create the folder; the check must not
    with pytest.raises(ValueError, match="/data/a/0.jpg and /data/b/0.png would both be written to"):
        saved_image_files([*items, {"image": "/data/b/0.png"}], post)
    with pytest.raises(ValueError, match="no SaveImage"):
        saved_image_files(items, Compose([Identityd(keys="pred")]))
