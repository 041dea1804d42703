"""Operations of the lesion bundle on a few real MedSeg slices at 32x32: multi-process (torchrun, gloo) training and
robustness sweep, kill-and-resume, MLflow tracking, determinism and safe loading through the bundle path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bundle_helpers import BUNDLES, REPO_ROOT, link_subset, network_def, run_workflow, workflow

BUNDLE = "lung_lesion_ct_segmentation"
CONFIGS = BUNDLES / BUNDLE / "configs"
NAMES = ["0", "1", "2", "3", "4", "5"]
# 6 slices: 4 train + 2 validation, so each of 2 ranks gets 2 training slices (one batch) and 1 validation slice.
SMALL = {"spatial_size": [32, 32], "batch_size": 2, "val_fraction": 0.34}
SMALL_CLI = ["--spatial_size", "[32, 32]", "--batch_size", "2", "--val_fraction", "0.34"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


@pytest.fixture(scope="module")
def slices(shared_dataset, tmp_path_factory):
    source = shared_dataset("ct_covid_medseg_infnet") / "train"
    return link_subset(source, tmp_path_factory.mktemp("medseg"), NAMES)


def _configs(*names: str) -> str:
    return "[" + ",".join(f"'{CONFIGS / name}'" for name in names) + "]"


def _bundle_args(slices: Path, out: Path, *configs: str) -> list[str]:
    return [
        "run",
        "--config_file",
        _configs(*configs),
        "--bundle_root",
        str(BUNDLES / BUNDLE),
        "--dataset_dir",
        str(slices),
        "--ckpt_dir",
        str(out / "models"),
        "--output_dir",
        str(out / "eval"),
        *SMALL_CLI,
    ]


def _run(command: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def _bundle(*args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "monai.bundle", *args])


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return _run([*torchrun, "-m", "monai.bundle", *args])


def _plain_network():
    return network_def(BUNDLE)


def _epoch(checkpoint: dict) -> int:
    trainer = checkpoint["trainer"]  # ignite saves the iteration count and the epoch length
    return trainer["iteration"] // trainer["epoch_length"]


def _assert_same_tensors(first: dict, second: dict, path: str = "") -> None:
    assert type(first) is type(second) or (isinstance(first, dict) and isinstance(second, dict)), path
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second), f"{path} differs by {float((first.float() - second.float()).abs().max())}"
    elif isinstance(first, dict):
        assert set(first) == set(second), path
        for key in first:
            _assert_same_tensors(first[key], second[key], f"{path}/{key}")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), path
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            _assert_same_tensors(a, b, f"{path}[{index}]")
    else:
        assert first == second, path


# --------------------------------------------------------------------------------------------------- multi-process
@pytest.fixture(scope="module")
def ddp_trained(slices, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    # --reuse_gradient false: the attack takes its own input-gradient pass (through the unwrapped network, so no DDP
    # all-reduce is left pending) instead of reusing the clean backward's input gradient
    args = _bundle_args(slices, out, "train.json", "multi_gpu_train.json")
    result = _torchrun(*args, "--epochs", "1", "--augmentation", "both", "--reuse_gradient", "false")
    return out, result.stdout + result.stderr


def test_torchrun_training_shards_the_data_and_saves_plain_checkpoints(ddp_trained):
    out, log = ddp_trained
    # 4 training slices, batch 2: one iteration per rank under DistributedSampler (two in a single process)
    assert "Epoch: 1/1, Iter: 1/1 -- train_loss" in log
    assert log.count("train_loss:") == 1  # StatsHandler only on rank 0
    for name in ("model.pt", "checkpoint.pt"):
        state = torch.load(out / "models" / name, map_location="cpu", weights_only=True)
        state = state.get("network", state)
        assert not any(key.startswith("module.") for key in state)  # saved unwrapped, not as DDP
        _plain_network().load_state_dict(state)  # strict load into the non-DDP network
    assert _epoch(torch.load(out / "models" / "checkpoint.pt", weights_only=True)) == 1


@pytest.mark.parametrize("reuse", ["true", "false"])
def test_torchrun_training_with_auxiliary_bn_saves_plain_checkpoints_and_trained_twins(slices, tmp_path, reuse):
    """DDP with --auxiliary_bn true (find_unused_parameters: the clean pass leaves the twins out, the copies the main
    batch norm): model.pt and the network in checkpoint.pt load strictly into the plain network; the twins, saved
    beside it for resuming, have seen the copies of both ranks' batches."""
    args = _bundle_args(slices, tmp_path, "train.json", "multi_gpu_train.json")
    _torchrun(*args, "--epochs", "1", "--auxiliary_bn", "true", "--reuse_gradient", reuse)
    checkpoint = torch.load(tmp_path / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)
    for state in (torch.load(tmp_path / "models" / "model.pt", weights_only=True), checkpoint["network"]):
        _plain_network().load_state_dict(state)  # strict: no twin and no "module." key
    twins = checkpoint["auxiliary_bn"]
    assert twins and all(int(twin["num_batches_tracked"]) == 2 for twin in twins.values())  # FGSM + inverse copy
    main = checkpoint["network"]
    assert all(int(main[f"{name}.num_batches_tracked"]) == 1 for name in twins)  # the clean batch only


def test_robustness_sweep_on_two_ranks_equals_one_rank(slices, ddp_trained, tmp_path):
    models = ddp_trained[0] / "models"
    # multi_gpu_train.json gives the process group, device and DDP network; the shipped multi_gpu_robust_evaluate.json
    # runs the sweep instead of training, on a sharded loader, with the TensorBoard handler on rank 0 only.
    configs = ("train.json", "robust_evaluate.json", "multi_gpu_train.json", "multi_gpu_robust_evaluate.json")
    _torchrun(*_bundle_args(slices, tmp_path / "two", *configs), "--epsilons", "[0.5, 4.0]", "--ckpt_dir", str(models))
    events = list((tmp_path / "two" / "eval" / "tensorboard" / "robustness").glob("events.*"))
    assert len(events) == 1, events  # one rank logs
    run_workflow(
        BUNDLE,
        ["train.json", "robust_evaluate.json"],
        dataset_dir=str(slices),
        ckpt_dir=str(models),
        output_dir=str(tmp_path / "one"),
        epsilons=[0.5, 4.0],
        **SMALL,
    )
    two = json.loads((tmp_path / "two" / "eval" / "robustness.json").read_text())
    one = json.loads((tmp_path / "one" / "robustness.json").read_text())
    assert two["n_cases"] == one["n_cases"] == 2

    def _cases(report):
        return {(c["case"], c["eps_levels"]): (c["dice"], c["jaccard"]) for c in report["cases"]}

    cases_two, cases_one = _cases(two), _cases(one)
    assert set(cases_two) == set(cases_one)
    for key, values in cases_one.items():
        assert cases_two[key] == pytest.approx(values, abs=1e-9), key
    for row_two, row_one in zip(two["metrics"], one["metrics"], strict=True):
        for key in ("eps_levels", "steps", "n_cases", "mean_dice", "mean_jaccard"):
            assert row_two[key] == pytest.approx(row_one[key], abs=1e-9), key


# --------------------------------------------------------------------------------------------------- resume
def test_training_killed_mid_epoch_resumes_to_the_same_weights(slices, tmp_path):
    """SIGKILL after iteration 1 of epoch 2 (of 2 iterations), then ``--resume true``: bit-identical final state.

    The run is paused inside iteration 3 by a hook (an override of the ``run`` list, used only by the killed run), so
    the kill falls mid-epoch, not at the epoch boundary where ``checkpoint.pt`` is written. With the default
    epoch-level checkpoints the resumed run restores the network, optimizer, trainer, best-metric and RNG state of
    the end of epoch 1 and replays epoch 2 whole, so on CPU it ends identical to an uninterrupted run (``torch.equal``).
    """
    epochs = ["--epochs", "2"]
    reference = tmp_path / "reference"
    _bundle(*_bundle_args(slices, reference, "train.json"), *epochs)

    interrupted = tmp_path / "interrupted"
    checkpoint = interrupted / "models" / "checkpoint.pt"
    paused = tmp_path / "paused_mid_epoch"
    pause = (
        "$@train#trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), "
        f"lambda engine: (open({str(paused)!r}, 'w').close(), time.sleep(600)))"
    )
    run = json.loads((CONFIGS / "train.json").read_text())["run"]
    hook = tmp_path / "pause_mid_epoch.json"
    override = {"+imports": ["$import time", "$from ignite.engine import Events"], "run": [*run[:-1], pause, run[-1]]}
    hook.write_text(json.dumps(override, indent=4))
    args = _bundle_args(slices, interrupted, "train.json")
    args[2] = args[2][:-1] + f",'{hook}']"
    log_path = tmp_path / "killed.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "monai.bundle", *args, *epochs],
            cwd=REPO_ROOT,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while not paused.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    killed_log = log_path.read_text()
    assert paused.exists() and process.returncode == -signal.SIGKILL, killed_log[-3000:]
    assert "Epoch: 2/2, Iter: 1/2 -- train_loss" in killed_log  # killed mid-epoch 2, after its first iteration
    assert "Epoch: 2/2, Iter: 2/2" not in killed_log
    assert torch.load(checkpoint, weights_only=True)["trainer"]["iteration"] == 2  # the end of epoch 1

    resumed = _bundle(*_bundle_args(slices, interrupted, "train.json"), *epochs, "--resume", "true")
    assert "Restored all variables from" in resumed.stdout + resumed.stderr
    final = torch.load(checkpoint, weights_only=True)
    expected = torch.load(reference / "models" / "checkpoint.pt", weights_only=True)
    assert _epoch(final) == _epoch(expected) == 2
    for key in ("network", "optimizer", "validator", "best_model_saver", "rng"):
        _assert_same_tensors(final[key], expected[key], key)
    _assert_same_tensors(
        torch.load(interrupted / "models" / "model.pt", weights_only=True),
        torch.load(reference / "models" / "model.pt", weights_only=True),
        "model.pt",
    )


def test_iteration_level_checkpoint_resumes_mid_epoch(slices, tmp_path):
    """A kill mid-epoch loses at most ``checkpoint_every`` iterations: the resumed run does only the missing ones."""
    from ignite.engine import Events

    settings = dict(dataset_dir=str(slices), ckpt_dir=str(tmp_path), output_dir=str(tmp_path), epochs=2, **SMALL)
    settings.update(checkpoint_epoch_level="false", checkpoint_every=1)
    flow = workflow(BUNDLE, ["train.json"], **settings)
    trainer = flow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda engine: engine.terminate())
    flow.run()  # stops after iteration 3 of 4 (epoch 2 of 2, mid-epoch); the checkpoint of iteration 3 is written
    flow.finalize()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 3

    flow = workflow(BUNDLE, ["train.json"], resume="true", **settings)
    trainer = flow.parser.get_parsed_content("train#trainer")
    done = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: done.append(engine.state.iteration))
    flow.run()
    flow.finalize()
    assert done == [4]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 4


def test_resume_without_a_checkpoint_fails_clearly(slices, tmp_path):
    with pytest.raises(Exception) as error:
        run_workflow(
            BUNDLE, ["train.json"], dataset_dir=str(slices), ckpt_dir=str(tmp_path), resume="true", epochs=1, **SMALL
        )
    assert "resume requested but no checkpoint at" in "".join(str(e) for e in _chain(error.value))


# --------------------------------------------------------------------------------------------------- tracking
def test_mlflow_tracking_records_the_training_run(slices, tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is the optional 'tracking' extra: pip install mlflow")
    import mlflow

    uri = f"sqlite:///{tmp_path / 'tracking.db'}"
    tracking = ["--tracking", "mlflow", "--tracking_uri", uri]
    _bundle(*_bundle_args(slices, tmp_path, "train.json"), "--epochs", "1", *tracking)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(BUNDLE)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert {"train_loss", "val_mean_dice", "val_mean_iou"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == 2  # 4 training slices, batch 2: one value per iteration
    assert 0 <= run.data.metrics["val_mean_dice"] <= 1

    # the robustness sweep of the trained model is a second run of the same experiment, with the per-eps metrics
    robust = _bundle_args(slices, tmp_path, "train.json", "robust_evaluate.json")
    _bundle(*robust, "--epsilons", "[0.5, 4]", *tracking)
    report = json.loads((tmp_path / "eval" / "robustness.json").read_text())
    runs = client.search_runs([experiment.experiment_id])
    (sweep,) = [r for r in runs if r.info.run_id != run.info.run_id]
    assert sweep.info.status == "FINISHED"
    for row in report["metrics"]:
        suffix = "" if row["setting"] == "clean" else f"_eps{row['eps_levels']:g}"
        assert sweep.data.metrics[f"dice{suffix}"] == pytest.approx(row["mean_dice"])
        assert sweep.data.metrics[f"jaccard{suffix}"] == pytest.approx(row["mean_jaccard"])


def test_tensorboard_logs_training_validation_and_the_sweep(slices, tmp_path):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    _bundle(*_bundle_args(slices, tmp_path, "train.json"), "--epochs", "2")
    _bundle(*_bundle_args(slices, tmp_path, "train.json", "robust_evaluate.json"), "--epochs", "2", "--epsilons", "[2]")
    logs = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "eval" / "tensorboard")).Reload()
    tags = ("train_iteration_loss", "val_mean_dice", "val_mean_iou", "dice", "dice_eps2", "jaccard_eps2")
    scalars = {tag: [] for tag in tags}
    for run in logs.Runs():
        for tag in logs.GetAccumulator(run).Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(event.value for event in logs.Scalars(run, tag))
    assert len(scalars["train_iteration_loss"]) == 4  # 2 epochs x 2 iterations
    assert len(scalars["val_mean_dice"]) == 2 and len(scalars["val_mean_iou"]) == 2
    report = json.loads((tmp_path / "eval" / "robustness.json").read_text())
    assert scalars["dice"] == [pytest.approx(report["metrics"][0]["mean_dice"])]
    assert scalars["dice_eps2"] == [pytest.approx(report["metrics"][1]["mean_dice"])]


BAR_MARKS = ("\u2588", "%|", "it/s", "s/it", "\r")  # tqdm / ignite ProgressBar: block, frame, rate, redraw


def test_progress_bars_only_on_a_terminal(slices, tmp_path):
    """No progress bar in captured output (logs, CI); the data-caching and training bars appear under a pty."""
    piped = _bundle(*_bundle_args(slices, tmp_path / "piped", "train.json"), "--epochs", "1")
    assert "train_loss" in piped.stdout + piped.stderr
    assert [mark for mark in BAR_MARKS if mark in piped.stdout + piped.stderr] == []

    import fcntl
    import pty
    import struct
    import termios
    import threading

    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # tqdm reads the width
    command = [sys.executable, "-m", "monai.bundle", *_bundle_args(slices, tmp_path / "tty", "train.json")]
    process = subprocess.Popen([*command, "--epochs", "1"], cwd=REPO_ROOT, env=ENV, stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks: list[bytes] = []

    def _drain() -> None:  # keep reading, or the process blocks on a full terminal buffer
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=_drain, daemon=True)
    reader.start()
    assert process.wait(timeout=240) == 0
    reader.join(timeout=10)
    os.close(master)
    shown = b"".join(chunks).decode(errors="replace")
    assert "train_loss" in shown, shown[-3000:]
    assert "Loading dataset" in shown and "\u2588" in shown, shown[-3000:]  # MONAI's caching bar (tqdm)
    assert "[1/2]" in shown, shown[-3000:]  # ignite's ProgressBar over the training iterations


# --------------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_weights_and_sweeps(slices, tmp_path):
    states, reports = [], []
    for name in ("a", "b"):
        out = tmp_path / name
        settings = dict(dataset_dir=str(slices), ckpt_dir=str(out / "models"), output_dir=str(out), **SMALL)
        run_workflow(BUNDLE, ["train.json"], epochs=1, **settings)
        states.append(torch.load(out / "models" / "checkpoint.pt", weights_only=True))
        run_workflow(BUNDLE, ["train.json", "robust_evaluate.json"], epochs=1, epsilons=[0.5, 4.0], **settings)
        report = json.loads((out / "robustness.json").read_text())
        reports.append((report["metrics"], report["cases"]))
    assert len(states[0]["network"]) > 0
    _assert_same_tensors(states[0]["network"], states[1]["network"], "network")
    _assert_same_tensors(states[0]["optimizer"], states[1]["optimizer"], "optimizer")

    def _numbers(metrics, cases):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in metrics], cases

    assert _numbers(*reports[0]) == _numbers(*reports[1])


# --------------------------------------------------------------------------------------------------- safe loading
class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_bundle_refuses_checkpoints_with_pickled_payloads(slices, tmp_path):
    network = _plain_network()
    (tmp_path / "models").mkdir()
    torch.save({"network": network.state_dict(), "note": _Payload()}, tmp_path / "models" / "model.pt")
    torch.save({"network": network.state_dict(), "note": _Payload()}, tmp_path / "models" / "checkpoint.pt")
    settings = dict(dataset_dir=str(slices), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path), **SMALL)
    cases = (
        (["train.json", "evaluate.json"], {}, "model.pt"),
        (["train.json"], {"resume": "true", "epochs": 1}, "checkpoint.pt"),
    )
    for configs, extra, name in cases:
        with pytest.raises(Exception) as error:
            run_workflow(BUNDLE, configs, **settings, **extra)
        refusals = [e for e in _chain(error.value) if isinstance(e, ValueError) and "refusing to load" in str(e)]
        assert refusals, configs
        message = str(refusals[0])
        assert f"refusing to load {tmp_path / 'models' / name}: it contains pickled Python objects" in message
        assert "weights_only=False" not in message  # torch's advice to load unsafely is not passed on


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__
