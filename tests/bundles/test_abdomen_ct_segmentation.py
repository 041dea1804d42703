"""The 3D abdomen CT bundle end to end on the real TotalSegmentator example CTs (NIfTI and a JPEG 2000 DICOM series).

Small settings keep the file fast: 32^3 patches, a 3-level U-Net with 8..32 channels, one epoch of one iteration.
The label maps are TotalSegmentator model output (pseudo ground truth), used here for pipeline checks only.
"""

import csv
import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from bundle_helpers import BUNDLES, bundle_cli, run_workflow, workflow
from dicom_helpers import drop_pixel_spacing, text_sr

from monai_advseg.data import load_dicom_series
from monai_advseg.workflows import PROPERTIES_FILE

BUNDLE = "abdomen_ct_segmentation"
CONFIGS = BUNDLES / BUNDLE / "configs"
TINY_NET = {"network_choices#unet#channels": [8, 16, 32], "network_choices#unet#strides": [2, 2]}
SMALL = {
    "spatial_size": [32, 32, 32],
    "epochs": 1,
    "val_interval": 1,
    "batch_size": 1,
    "num_samples": 1,
    "num_workers": 0,
    **TINY_NET,
}
SECRET = "ZZSECRET^PATIENT"
SECRET_ID = "SECRETID-4711"
INSTITUTION = "ZZINSTITUTE"
# the shipped series has blanked Study/Series UIDs, which a DICOM-SEG must reference; the private copy sets them
STUDY_UID = "1.2.826.0.1.3680043.8.498.2001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2002"


def _cli_overrides(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    return args


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread, here and in the CLI subprocesses: on a loaded 2-core machine a 3D U-Net step with two
    threads was measured 20x slower (1.3 s vs 0.066 s for 8..32 channels at 32^3) than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def totalseg(shared_dataset):
    return shared_dataset("ct_totalseg_example")


@pytest.fixture(scope="module")
def data(totalseg, tmp_path_factory):
    """``imagesTr/labelsTr`` of symbolic links: the small NIfTI volume and the DICOM series (a folder of links).

    ``build_datalist`` (``dataset_dir``) pairs images with labels by the names as given, here the links' own names
    (``series1`` with ``series1.nii.gz``), and then stores the resolved paths. The NIfTI image link keeps its target's
    name so that tests can pick that item by name whether they see the link (datalist JSON) or the resolved target.
    """
    root = tmp_path_factory.mktemp("abdomen")
    (root / "imagesTr" / "series1").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "example_ct_sm.nii.gz").symlink_to(totalseg / "nifti" / "example_ct_sm.nii.gz")
    (root / "labelsTr" / "example_ct_sm.nii.gz").symlink_to(totalseg / "nifti" / "example_seg.nii.gz")
    for f in sorted((totalseg / "dicom").iterdir()):
        (root / "imagesTr" / "series1" / f.name).symlink_to(f)
    (root / "labelsTr" / "series1.nii.gz").symlink_to(totalseg / "dicom_labels" / "example_seg_dicom.nii.gz")
    nifti = {"image": "imagesTr/example_ct_sm.nii.gz", "label": "labelsTr/example_ct_sm.nii.gz"}
    dicom = {"image": "imagesTr/series1", "label": "labelsTr/series1.nii.gz"}
    (root / "datalist.json").write_text(json.dumps({"training": [dicom], "validation": [nifti]}, indent=4))
    (root / "nifti_only.json").write_text(json.dumps({"training": [nifti], "validation": [nifti]}, indent=4))
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One short training run from a decathlon datalist JSON (DICOM series to train, NIfTI to validate)."""
    out = tmp_path_factory.mktemp("trained")
    run_workflow(
        BUNDLE,
        ["train.json"],
        datalist=str(data / "datalist.json"),
        ckpt_dir=str(out / "models"),
        output_dir=str(out / "eval"),
        **SMALL,
    )
    return out


@pytest.fixture(scope="module")
def secret_series(totalseg, tmp_path_factory):
    """A copy of the DICOM series whose PatientName, PatientID and InstitutionName are known strings."""
    folder = tmp_path_factory.mktemp("private") / "series"
    folder.mkdir()
    for f in sorted((totalseg / "dicom").iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientName = SECRET
        ds.PatientID = SECRET_ID
        ds.InstitutionName = INSTITUTION
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, SERIES_UID
        ds.save_as(folder / f.name)
    return folder


@pytest.fixture(scope="module")
def inferred(trained, totalseg, secret_series, tmp_path_factory):
    """Inference through the CLI on the (renamed-patient) DICOM series and on a NIfTI file, with DICOM-SEG output."""
    out = tmp_path_factory.mktemp("inference") / "segmentations"
    inputs = [str(secret_series), str(totalseg / "nifti" / "example_ct_sm.nii.gz")]
    settings = {"datalist": inputs, "ckpt_dir": str(trained / "models"), "output_dir": str(out), "dicom_seg": "true"}
    result = bundle_cli(
        "run",
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--bundle_root",
        str(BUNDLES / BUNDLE),
        *_cli_overrides({**settings, "spatial_size": [32, 32, 32], **TINY_NET}),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_properties_of_train_and_infer_workflows(data, totalseg):
    train = workflow(BUNDLE, ["train.json"], "train", dataset_dir=str(data), val_fraction=0.5)
    assert train.check_properties() == []
    nifti = [str(totalseg / "nifti" / "example_ct_sm.nii.gz")]
    assert workflow(BUNDLE, ["inference.json"], "infer", datalist=nifti).check_properties() == []
    assert workflow(BUNDLE, ["inference.json"], "infer", datalist=nifti, dicom_seg="true").check_properties() == []
    # what `python -m monai_advseg robustness` reads of a bundle (the any-bundle workflow's MONAI properties file)
    robust = workflow(BUNDLE, ["train.json"], "infer", properties_path=str(PROPERTIES_FILE), dataset_dir=str(data))
    assert robust.check_properties() == []


def test_label_ids_select_and_renumber_the_organs(data):
    flow = workflow(BUNDLE, ["train.json"], dataset_dir=str(data), val_fraction=0.5, **SMALL)
    items = flow.parser.get_parsed_content("train_items") + flow.parser.get_parsed_content("val_items")
    item = next(i for i in items if i["image"].endswith("example_ct_sm.nii.gz"))
    prepared = flow.parser.get_parsed_content("validate#preprocessing")(item)
    source = np.asarray(nib.load(item["label"]).dataobj)
    label = prepared["label"].numpy()
    assert set(np.unique(label)) == {0.0, 1.0, 2.0}  # background, liver (id 5), spleen (id 1)
    # voxel counts after 3 mm resampling stay close to the source counts (both grids are 3 mm for this volume)
    for value, organ in ((1, 5), (2, 1)):
        assert (label == value).sum() == pytest.approx((source == organ).sum(), rel=0.05)
    image = prepared["image"]
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert tuple(image.shape[1:]) >= (32, 32, 32)


def test_training_saves_a_checkpoint_that_loads_into_the_network(trained):
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = workflow(BUNDLE, ["train.json"], datalist={"training": []}, **TINY_NET).parser.get_parsed_content(
        "network_def"
    )
    network.load_state_dict(state)  # strict: every key present, every shape right
    assert network(torch.zeros(1, 1, 32, 32, 32)).shape[1] == 3  # background, liver, spleen


def test_evaluate_reports_dice_and_jaccard(data, trained, tmp_path):
    settings = dict(datalist=str(data / "datalist.json"), ckpt_dir=str(trained / "models"), output_dir=str(tmp_path))
    run_workflow(BUNDLE, ["train.json", "evaluate.json"], **settings, **SMALL)
    rows = {row[0]: float(row[1]) for row in csv.reader((tmp_path / "metrics.csv").open())}
    assert set(rows) == {"val_mean_dice", "val_mean_iou"}
    assert 0 <= rows["val_mean_iou"] <= rows["val_mean_dice"] <= 1


def test_inference_writes_masks_in_the_original_geometry(inferred, secret_series, totalseg):
    out, _ = inferred
    array, meta = load_dicom_series(secret_series)
    dicom_pred = nib.load(out / f"{secret_series.name}_seg.nii.gz")
    assert dicom_pred.shape == array.shape == (512, 512, 20)
    assert np.allclose(dicom_pred.affine, meta["affine"], atol=1e-4)
    source = nib.load(totalseg / "nifti" / "example_ct_sm.nii.gz")
    nifti_pred = nib.load(out / "example_ct_sm_seg.nii.gz")
    assert nifti_pred.shape == source.shape
    assert np.allclose(nifti_pred.affine, source.affine, atol=1e-4)
    for pred in (dicom_pred, nifti_pred):
        assert pred.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{secret_series.name}_seg.nii.gz", f"{secret_series.name}_seg.dcm", "example_ct_sm_seg.nii.gz"]
    )


def test_inference_writes_a_dicom_seg_of_the_series_prediction(inferred, secret_series):
    highdicom = pytest.importorskip("highdicom")
    out, result = inferred
    seg = highdicom.seg.segread(out / f"{secret_series.name}_seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID and seg.StudyInstanceUID == STUDY_UID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen"]
    pred = nib.load(out / f"{secret_series.name}_seg.nii.gz")
    labels = np.asarray(pred.dataobj)
    assert (labels > 0).any()  # the frame comparison below is not between empty masks
    inverse = np.linalg.inv(pred.affine)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(secret_series.iterdir())]
    uids = [ds.file_meta.MediaStorageSOPInstanceUID for ds in headers]  # the data sets' SOPInstanceUID is blank
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2])
    slices = set()
    for ds, frame in zip(headers, frames, strict=True):
        # the NIfTI voxel under the instance's first pixel: (0, 0, k) on the series grid (RAS = LPS with x, y negated)
        voxel = inverse @ [
            -float(ds.ImagePositionPatient[0]),
            -float(ds.ImagePositionPatient[1]),
            float(ds.ImagePositionPatient[2]),
            1.0,
        ]
        k = int(round(voxel[2]))
        np.testing.assert_allclose(voxel[:3], [0, 0, k], atol=1e-3)
        slices.add(k)
        for number in (1, 2):
            np.testing.assert_array_equal(frame[..., number - 1], labels[:, :, k].T == number)
    assert slices == set(range(20))
    logs = result.stdout + result.stderr
    assert "wrote DICOM-SEG" in logs
    assert "no DICOM-SEG for" in logs and "example_ct_sm.nii.gz" in logs  # the NIfTI input: one warning, no SEG


def test_dicom_seg_refuses_a_series_without_uids_before_writing(totalseg, tmp_path):
    out = tmp_path / "segmentations"
    with pytest.raises(Exception) as error:
        workflow(
            BUNDLE,
            ["inference.json"],
            "infer",
            datalist=[str(totalseg / "dicom")],
            output_dir=str(out),
            dicom_seg="true",
        )
    text = _messages(error.value)
    assert "StudyInstanceUID" in text and str(totalseg / "dicom") in text
    assert not out.exists()


def test_no_patient_identifier_in_outputs_or_logs(inferred, secret_series):
    assert pydicom.dcmread(next(secret_series.iterdir())).PatientName == SECRET  # the input does hold it
    out, result = inferred
    logs = result.stdout + result.stderr
    assert "writing" in logs and "wrote DICOM-SEG" in logs  # the logs were captured
    for secret in (SECRET, "ZZSECRET", SECRET_ID, INSTITUTION):
        assert secret not in logs
        for path in out.iterdir():
            if path.suffix == ".dcm":
                continue  # the DICOM-SEG carries the Patient module by design; checked below
            content = path.read_bytes()
            content = gzip.decompress(content) if path.suffix == ".gz" else content
            assert secret.encode() not in content, path
    seg = pydicom.dcmread(out / f"{secret_series.name}_seg.dcm")
    assert str(seg.PatientName) == SECRET and seg.PatientID == SECRET_ID  # same patient: required
    assert INSTITUTION.encode() not in (out / f"{secret_series.name}_seg.dcm").read_bytes()
    assert "InstitutionName" not in seg and "OperatorsName" not in seg and not seg.get("ReferringPhysicianName")


def test_robust_sweep_through_the_sliding_window_writes_the_report(data, trained, tmp_path):
    flow = run_workflow(
        BUNDLE,
        ["train.json", "robust_evaluate.json"],
        datalist=str(data / "datalist.json"),
        ckpt_dir=str(trained / "models"),
        output_dir=str(tmp_path),
        epsilons=[1, 2],
        **SMALL,
    )
    evaluator = flow.parser.get_parsed_content("robust_evaluate#evaluator")
    assert type(evaluator.inferer).__name__ == "SlidingWindowInferer"
    assert evaluator.max_batch == 2
    for name in ("robustness.csv", "robustness_cases.csv", "robustness.json"):
        assert (tmp_path / name).is_file()
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert [row["eps_levels"] for row in report["metrics"]] == [0, 1, 2]
    assert all(np.isfinite(row["mean_dice"]) for row in report["metrics"])
    assert {case["case"] for case in report["cases"]} == {str(data / "imagesTr" / "example_ct_sm.nii.gz")}
    assert report["config"]["bundle"] == BUNDLE
    assert report["config"]["label_ids"] == [5, 1]


def _leaks(secrets, logs: str, folder) -> list[str]:
    """Where any of ``secrets`` appears: ``"logs"`` and the paths of files under ``folder`` (gzip read unpacked)."""
    found = ["logs"] if any(secret in logs for secret in secrets) else []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        content = path.read_bytes()
        content = gzip.decompress(content) if path.suffix == ".gz" else content
        found += [str(path)] if any(secret.encode() in content for secret in secrets) else []
    return found


def test_robust_sweep_on_an_identified_series_leaks_no_identifier(trained, secret_series, totalseg, tmp_path):
    """The sweep through the bundle CLI on the series whose PatientName, PatientID and InstitutionName are set: none
    of them appears in the reports (CSV, JSON, figure), the TensorBoard files or the logs."""
    label = str(totalseg / "dicom_labels" / "example_seg_dicom.nii.gz")
    item = {"image": str(secret_series), "label": label}
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [item], "validation": [item]}))
    out = tmp_path / "robustness"
    settings = {
        "datalist": str(tmp_path / "datalist.json"),
        "ckpt_dir": str(trained / "models"),
        "output_dir": str(out),
        "epsilons": [1],
        **SMALL,
    }
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "robust_evaluate.json")]
    result = bundle_cli(
        "run", "--config_file", json.dumps(configs), "--bundle_root", str(BUNDLES / BUNDLE), *_cli_overrides(settings)
    )
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-3000:]
    assert "RobustnessEvaluator - INFO - Engine run finished" in logs  # the logs were captured
    report = json.loads((out / "robustness.json").read_text())
    assert [row["eps_levels"] for row in report["metrics"]] == [0, 1]
    assert {case["case"] for case in report["cases"]} == {str(secret_series)}  # the sweep did read that series
    assert {"robustness.csv", "robustness_cases.csv", "robustness.json"} <= {p.name for p in out.iterdir()}
    assert _leaks((SECRET, "ZZSECRET", SECRET_ID, INSTITUTION), logs, out) == []


@pytest.mark.parametrize("network, auxiliary_bn", [("nlce_unet", "false"), ("nlce_unet", "true")])
def test_other_network_trains_and_validates_through_the_bundle(network, auxiliary_bn, data, tmp_path):
    """``network=nlce_unet`` (3D): one training iteration and one sliding-window validation, a checkpoint that
    loads into that network (strictly also with ``--auxiliary_bn true``: the 3D twins are not in it)."""
    tiny = {f"network_choices#{network}#channels": [8, 16, 32], f"network_choices#{network}#strides": [2, 2]}
    flow = run_workflow(
        BUNDLE,
        ["train.json"],
        datalist=str(data / "nifti_only.json"),
        network=network,
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        auxiliary_bn=auxiliary_bn,
        **{**SMALL, **tiny},
    )
    trainer = flow.parser.get_parsed_content("train#trainer")
    assert any(hasattr(m, "auxiliary_bn") for m in trainer.network.modules()) == (auxiliary_bn == "true")
    net = flow.parser.get_parsed_content("network_def")
    assert type(net).__name__ == "NLCEUNet"
    assert flow.parser.get_parsed_content("train#trainer").state.iteration == 1
    assert np.isfinite(flow.parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"])
    net.load_state_dict(torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True))


def test_gpu_pipeline_switch_runs_on_the_device(data, tmp_path, device):
    """``--gpu_pipeline true`` caches the volumes on ``device`` and crops there (``cpu`` runs the same path)."""
    flow = run_workflow(
        BUNDLE,
        ["train.json"],
        datalist=str(data / "nifti_only.json"),
        gpu_pipeline="true",
        device=str(device),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        **{**SMALL, "num_workers": 2},
    )
    loader = flow.parser.get_parsed_content("train#dataloader")
    assert type(loader).__name__ == "ThreadDataLoader" and loader.num_workers == 0
    to_device = flow.parser.get_parsed_content("deterministic")[-1]
    assert torch.device(to_device.converter.device).type == device.type
    cached = flow.parser.get_parsed_content("train#dataset")[0][0]  # a random crop of the cached volume
    assert cached["image"].device.type == device.type
    assert (tmp_path / "models" / "model.pt").is_file()


def test_without_validation_items_the_final_model_is_saved(data, tmp_path):
    datalist = json.loads((data / "nifti_only.json").read_text())
    datalist["validation"] = []  # what `python -m monai_advseg.data.datalist` writes with --val-fraction 0
    for item in datalist["training"]:
        item.update({key: str(data / value) for key, value in item.items()})
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    flow = run_workflow(
        BUNDLE,
        ["train.json"],
        datalist=str(tmp_path / "datalist.json"),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        **SMALL,
    )
    handlers = [type(h).__name__ for h in flow.parser.get_parsed_content("train#handlers")]
    assert "ValidationHandler" not in handlers
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    flow.parser.get_parsed_content("network_def").load_state_dict(state)


def _shifted_label(source, target, shift_mm=15.0):
    label = nib.load(source)
    affine = label.affine.copy()
    affine[:3, 3] += shift_mm
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), affine), target)
    return target


def test_training_datalist_with_a_missing_file_fails_naming_it(data, tmp_path):
    missing = tmp_path / "nowhere" / "case9.nii.gz"
    nifti = json.loads((data / "nifti_only.json").read_text())["training"][0]
    present = {key: str(data / value) for key, value in nifti.items()}
    datalist = {"training": [present, {**present, "image": str(missing)}], "validation": [present]}
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    settings = dict(datalist=str(tmp_path / "datalist.json"), ckpt_dir=str(tmp_path / "models"), **SMALL)
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ["train.json"], output_dir=str(tmp_path / "eval"), **settings)
    text = _messages(error.value)
    assert str(missing) in text and str(tmp_path / "datalist.json") in text
    assert not (tmp_path / "models").exists() and not (tmp_path / "eval").exists()


@pytest.mark.parametrize("source", ["dataset_dir", "datalist_json"])
def test_label_with_other_geometry_fails_naming_it(data, totalseg, tmp_path, source):
    folder = tmp_path / "data"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    image = folder / "imagesTr" / "example_ct_sm.nii.gz"
    image.symlink_to(totalseg / "nifti" / "example_ct_sm.nii.gz")
    label = _shifted_label(totalseg / "nifti" / "example_seg.nii.gz", folder / "labelsTr" / "example_ct_sm.nii.gz")
    settings = dict(ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"), val_fraction=0.0, **SMALL)
    if source == "datalist_json":
        item = {"image": str(image), "label": str(label)}
        (tmp_path / "datalist.json").write_text(json.dumps({"training": [item], "validation": [item]}))
        settings["datalist"] = str(tmp_path / "datalist.json")
    else:
        settings["dataset_dir"] = str(folder)
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ["train.json"], **settings)
    text = _messages(error.value)
    assert str(label) in text and "geometry differs" in text
    assert not (tmp_path / "models").exists() and not (tmp_path / "eval").exists()


def test_inference_refuses_missing_input_and_existing_output(trained, totalseg, tmp_path):
    nifti = str(totalseg / "nifti" / "example_ct_sm.nii.gz")
    missing = str(tmp_path / "absent" / "series")
    settings = dict(ckpt_dir=str(trained / "models"), spatial_size=[32, 32, 32], **TINY_NET)
    with pytest.raises(Exception) as error:
        run_workflow(
            BUNDLE, ["inference.json"], "infer", datalist=[nifti, missing], output_dir=str(tmp_path / "a"), **settings
        )
    assert missing in _messages(error.value)
    assert not (tmp_path / "a").exists()  # checked before anything is written
    existing = tmp_path / "b"
    existing.mkdir()
    (existing / "example_ct_sm_seg.nii.gz").write_bytes(b"an earlier result")
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ["inference.json"], "infer", datalist=[nifti], output_dir=str(existing), **settings)
    assert str(existing) in _messages(error.value)
    assert (existing / "example_ct_sm_seg.nii.gz").read_bytes() == b"an earlier result"


def _messages(error: BaseException) -> str:
    texts = []
    while error is not None:
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


@pytest.fixture(scope="module")
def untrained_models(tmp_path_factory):
    """``model.pt`` of the tiny network with its initial weights: enough for tests of input and output handling."""
    folder = tmp_path_factory.mktemp("untrained") / "models"
    folder.mkdir()
    flow = workflow(BUNDLE, ["inference.json"], "infer", datalist=[], **TINY_NET)
    torch.save(flow.parser.get_parsed_content("network_def").state_dict(), folder / "model.pt")
    return folder


def _bad_inference_input(kind: str, totalseg, folder, dcmqi=None):
    """A bad input of ``kind`` in ``folder`` and the reason its error must give."""
    source = totalseg / "nifti" / "example_ct_sm.nii.gz"
    if kind == "truncated_nifti":
        data = source.read_bytes()
        (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 2])  # the header still parses
        return folder / "truncated.nii.gz", "NIfTI data is truncated or corrupt"
    if kind == "nan_voxels":
        image = nib.load(source)
        data = np.asarray(image.dataobj, dtype=np.float32)
        data[60, 50, 15] = np.nan
        nib.save(nib.Nifti1Image(data, image.affine), folder / "nanvol.nii.gz")
        return folder / "nanvol.nii.gz", "image holds non-finite voxels (1 NaN, 0 Inf of 369660)"
    if kind == "four_d":
        image = nib.load(source)
        data = np.asarray(image.dataobj)
        nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), image.affine), folder / "twophase.nii.gz")
        return folder / "twophase.nii.gz", "image has 4 dimensions, shape (122, 101, 30, 2); expected a 3D image"
    if kind == "missing_file":
        return folder / "gone" / "case7.nii.gz", "image file not found"
    if kind == "empty_dicom_folder":
        (folder / "series_empty").mkdir()
        return folder / "series_empty", "DICOM series folder is empty"
    if kind in ("non_image_dicom", "no_pixel_spacing"):
        # the returned path is the file the error must name; the run is given its series folder
        series = shutil.copytree(dcmqi / "dicom", folder / "series3")
        if kind == "no_pixel_spacing":
            return drop_pixel_spacing(series / "02.dcm"), "slice lacks PixelSpacing (SOP class CT Image Storage"
        text_sr(series / "report.dcm", pydicom.dcmread(series / "01.dcm").SeriesInstanceUID)
        return series / "report.dcm", "not an image slice (SOP class Basic Text SR"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "truncated_nifti",
        "nan_voxels",
        "four_d",
        "missing_file",
        "empty_dicom_folder",
        "non_image_dicom",
        "no_pixel_spacing",
    ],
)
def test_inference_cli_fails_on_bad_input_before_writing(kind, totalseg, shared_dataset, untrained_models, tmp_path):
    """A good input first, the bad one second: the run exits with status 1 naming the bad input (for a bad file in
    a DICOM series folder, that file) and the reason, and neither the output folder nor a staging folder is left
    (the good input's prediction was not written either)."""
    bad, reason = _bad_inference_input(kind, totalseg, tmp_path, shared_dataset("ct_dicom_3slice_dcmqi"))
    given = bad.parent if bad.suffix == ".dcm" else bad
    out = tmp_path / "results" / "segmentations"
    settings = {
        "datalist": [str(totalseg / "nifti" / "example_ct_sm.nii.gz"), str(given)],
        "ckpt_dir": str(untrained_models),
        "output_dir": str(out),
        "spatial_size": [32, 32, 32],
        **TINY_NET,
    }
    result = bundle_cli(
        "run",
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--bundle_root",
        str(BUNDLES / BUNDLE),
        *_cli_overrides(settings),
    )
    logs = result.stdout + result.stderr
    assert result.returncode == 1, logs[-3000:]
    assert f"ERROR - bad input: {bad}: {reason}" in result.stdout, logs[-3000:]  # one line in the bundle log
    assert result.stdout.count("ERROR - bad input:") == 1
    assert f"monai_advseg.data.checks.InputError: {bad}: {reason}" in result.stderr  # the first line of the error
    assert not (tmp_path / "results").exists()  # not even the parent: inputs are checked before anything is made


@pytest.mark.parametrize("existing", [False, True], ids=["new_folder", "overwrite_existing"])
def test_failure_during_inference_leaves_no_partial_output(existing, totalseg, untrained_models, tmp_path):
    """With the input checks switched off a truncated second input fails inside the run, after the first prediction
    was written: that prediction goes with the staging folder, and an existing output folder keeps its files."""
    import os

    from monai_advseg.data import StagedOutputFolder

    truncated, _ = _bad_inference_input("truncated_nifti", totalseg, tmp_path)
    out = tmp_path / "segmentations"
    if existing:
        out.mkdir()
        (out / "example_ct_sm_seg.nii.gz").write_bytes(b"an earlier result")
    staged = []
    discard = StagedOutputFolder.discard

    def spy(self):
        staged.extend(sorted(os.listdir(self.staging_dir)))
        discard(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StagedOutputFolder, "discard", spy)
        with pytest.raises(Exception) as error:
            run_workflow(
                BUNDLE,
                ["inference.json"],
                "infer",
                datalist=[str(totalseg / "nifti" / "example_ct_sm.nii.gz"), str(truncated)],
                check_inputs="$[]",
                ckpt_dir=str(untrained_models),
                output_dir=str(out),
                overwrite=existing,
                spatial_size=[32, 32, 32],
                **TINY_NET,
            )
    assert "end-of-stream marker" in _messages(error.value)  # the reader's own error: the checks were off
    assert staged == ["example_ct_sm_seg.nii.gz"]  # the first prediction had been written when the run failed
    if existing:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["segmentations", "truncated.nii.gz"]
        assert [p.name for p in out.iterdir()] == ["example_ct_sm_seg.nii.gz"]
        assert (out / "example_ct_sm_seg.nii.gz").read_bytes() == b"an earlier result"
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.nii.gz"]


def test_overwrite_replaces_same_named_predictions_and_keeps_other_files(totalseg, untrained_models, tmp_path):
    out = tmp_path / "segmentations"
    out.mkdir()
    (out / "example_ct_sm_seg.nii.gz").write_bytes(b"an earlier result")
    (out / "notes.txt").write_text("kept")
    run_workflow(
        BUNDLE,
        ["inference.json"],
        "infer",
        datalist=[str(totalseg / "nifti" / "example_ct_sm.nii.gz")],
        ckpt_dir=str(untrained_models),
        output_dir=str(out),
        overwrite="true",
        spatial_size=[32, 32, 32],
        **TINY_NET,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segmentations"]  # the staging folder is gone
    assert sorted(p.name for p in out.iterdir()) == ["example_ct_sm_seg.nii.gz", "notes.txt"]
    assert nib.load(out / "example_ct_sm_seg.nii.gz").shape == (122, 101, 30)
    assert (out / "notes.txt").read_text() == "kept"


def test_successful_inference_leaves_no_staging_folder(inferred):
    out, _ = inferred
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_inference_needs_the_training_label_ids(totalseg, tmp_path):
    """The README's rule: inference.json does not read train.json, so ``label_ids`` must be repeated. A checkpoint of
    four organs fails to load with the default two (no output left) and runs with the training's ``label_ids``."""
    four = {"label_ids": [5, 1, 2, 3], "label_names": ["liver", "spleen", "kidney_right", "kidney_left"]}
    (tmp_path / "models").mkdir()
    network = workflow(BUNDLE, ["train.json"], datalist={"training": []}, **four, **TINY_NET).parser.get_parsed_content(
        "network_def"
    )
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    settings = dict(
        datalist=[str(totalseg / "nifti" / "example_ct_sm.nii.gz")],
        ckpt_dir=str(tmp_path / "models"),
        spatial_size=[32, 32, 32],
        **TINY_NET,
    )
    with pytest.raises(Exception) as error:
        run_workflow(BUNDLE, ["inference.json"], "infer", output_dir=str(tmp_path / "default"), **settings)
    assert "size mismatch" in _messages(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    run_workflow(BUNDLE, ["inference.json"], "infer", output_dir=str(tmp_path / "four"), **settings, **four)
    assert [p.name for p in (tmp_path / "four").iterdir()] == ["example_ct_sm_seg.nii.gz"]
