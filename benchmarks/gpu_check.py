"""The Python steps of ``benchmarks/gpu_check.sh``: each writes one JSON part; ``report`` merges them into one JSON.

Subcommands (``python benchmarks/gpu_check.py STEP --help``):

- ``setup WHEELS SITE``: unpack the carried wheels whose top-level packages this Python cannot import yet into SITE
  (no pip, no network: a wheel is a zip file; the machine's own numpy, torch, ... stay in charge).
- ``env``: date, GPU model, driver, torch / CUDA / cuDNN / MONAI versions and the commit the prepare step recorded.
- ``bench SCRIPT [ARGS...]``: run a benchmark's ``main()`` in this process with ``sys.argv`` set, keep its printed
  lines, the key figure (the last line), the figures it returns (attack_cost, augmentation_cost) and the peak GPU
  memory of the whole call (``torch.cuda.max_memory_allocated``, warm-up included).
- ``autocast``: the share of input-gradient signs under fp16 and bf16 autocast (and TF32) that agree with strict
  fp32, on a 3D U-Net batch (128^3 on the GPU), for the summed and the mean cross-entropy.
- ``bundle``: the abdomen bundle on real CT with ``--gpu_pipeline true``: a short training run (AMP on) to get a
  checkpoint, then the robustness sweep on a few eps.
- ``tests``: the counts and failures of a pytest JUnit XML file.
- ``report``: every part of a folder into one JSON, with each step's exit code, time and log tail, and the
  summary table printed; ``markdown``: that JSON as the results section of ``docs/results/gpu.md``.

Everything that needs a GPU takes ``--device`` so that its logic runs on the CPU in the tests
(``tests/benchmarks/test_gpu_check.py``) with tiny sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
SCHEMA = "monai_advseg.gpu_check/1"
BUNDLE = "abdomen_ct_segmentation"


def write_part(path: str | Path, part: dict[str, Any]) -> None:
    """Write one step's result as JSON (NaN and infinities become null, so the file is strict JSON)."""
    Path(path).write_text(json.dumps(_finite(part), indent=2) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------- setup


def wheel_top_levels(wheel: Path) -> list[str]:
    """The top-level importable names of a wheel (its folders and modules outside ``*.dist-info`` / ``*.data``)."""
    names = set()
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            top = name.split("/", 1)[0]
            if top.endswith((".dist-info", ".data")):
                continue
            names.add(top[:-3] if top.endswith(".py") else top.split(".", 1)[0])
    return sorted(names)


def unpack_missing_wheels(wheels: Path, site: Path, importable: Callable[[str], bool] | None = None) -> dict:
    """Unpack each wheel of ``wheels`` none of whose top-level packages is importable into ``site``.

    The machine's own packages win: a wheel is skipped as soon as one of its top-level names imports already (e.g.
    ``packaging``), so the carried fallbacks never shadow what the machine has. A wheel unpacked by an earlier run
    (its ``.dist-info`` in ``site``) is kept.

    Returns:
        ``{"unpacked": [...], "present": [...], "kept": [...]}`` wheel file names.
    """
    if importable is None:

        def importable(name: str) -> bool:
            return importlib.util.find_spec(name) is not None

    site.mkdir(parents=True, exist_ok=True)
    done: dict[str, list[str]] = {"unpacked": [], "present": [], "kept": []}
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            info = next(n.split("/", 1)[0] for n in archive.namelist() if n.split("/", 1)[0].endswith(".dist-info"))
            if (site / info).is_dir():
                done["kept"].append(wheel.name)
                continue
            if any(importable(name) for name in wheel_top_levels(wheel)):
                done["present"].append(wheel.name)
                continue
            for member in archive.infolist():
                parts = member.filename.split("/")
                if parts[0].endswith(".data"):  # purelib / platlib go to the site root; scripts, headers are not needed
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue
                    target = site.joinpath(*parts[2:])
                else:
                    target = site / member.filename
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
        done["unpacked"].append(wheel.name)
    return done


# ----------------------------------------------------------------------------------------------------- carry size

CARRY_LIMIT_BYTES = 64 * 2**20  # the device tool carries at most 64 MiB: working tree plus the carried paths


def carried_bytes(root: Path, carry: Sequence[str]) -> dict[str, int]:
    """Bytes the device tool copies: the files git would (tracked plus untracked-not-ignored) and the ``carry`` paths.

    Returns:
        ``{"tree": ..., "carry": ..., "total": ...}`` in bytes (symbolic links count as what they point to, since a
        copy would follow them; missing tracked files count 0).
    """
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = [root / os.fsdecode(name) for name in listing if name]
    tree = sum(path.stat().st_size for path in files if path.is_file())
    carried = 0
    for path in carry:
        base = root / path
        files = [base] if base.is_file() else [f for f in base.rglob("*") if f.is_file()] if base.is_dir() else []
        carried += sum(f.stat().st_size for f in files)
    return {"tree": tree, "carry": carried, "total": tree + carried}


# ------------------------------------------------------------------------------------------------------------ env


def environment(commit_file: Path | None = None) -> dict[str, Any]:
    """What the figures were measured with: date, machine, GPU, versions, commit."""
    import torch

    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [],
    }
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        info["gpus"].append(
            {
                "name": properties.name,
                "memory_gib": round(properties.total_memory / 2**30, 1),
                "capability": f"{properties.major}.{properties.minor}",
            }
        )
    try:
        smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        info["driver"] = subprocess.run(smi, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    for module in ("monai", "ignite", "nibabel", "pydicom", "numpy", "SimpleITK"):
        try:
            info[module] = getattr(__import__(module), "__version__", "unknown")
        except ImportError:
            info[module] = None  # SimpleITK is not carried to the GPU machine (DICOM only)
    if commit_file is not None and commit_file.is_file():
        info["commit"] = " ".join(commit_file.read_text().split())
    info["summary"] = ", ".join(
        [", ".join(g["name"] for g in info["gpus"]) or "no GPU", f"torch {info['torch']}", f"CUDA {info['cuda']}"]
    )
    return info


# ---------------------------------------------------------------------------------------------------------- bench


class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy, so the log shows the benchmark as it runs."""

    def __init__(self, stream) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.stream.flush()
        return self.copy.write(text)


def run_benchmark(script: Path, args: Sequence[str]) -> dict[str, Any]:
    """Run ``script``'s ``main()`` in this process as ``python script ARGS`` would, and collect what it measured.

    Returns a part with ``status`` (``passed``, ``failed`` or ``absent`` when the script is not in this tree),
    ``lines`` (what it printed), ``key`` (the last line as a number), ``figures`` (what ``main`` returned, if a
    dict), ``wall_s`` and ``peak_gpu_memory_mib`` (over the whole call; None on the CPU).
    """
    import torch

    part: dict[str, Any] = {"script": str(script.relative_to(REPO_ROOT)), "args": list(args)}
    if not script.is_file():
        return {**part, "status": "absent", "summary": "not in this tree"}
    # the benchmarks import their siblings (reference_model, bench_device) as top-level modules
    if str(script.parent) not in sys.path:
        sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location(f"gpu_check_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tee, errors, argv, error, figures = _Tee(sys.stdout), _Tee(sys.stderr), sys.argv, None, None
    began = time.perf_counter()
    try:
        sys.argv = [str(script), *args]
        with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(errors):
            spec.loader.exec_module(module)
            figures = module.main()
    except SystemExit as stop:  # argparse errors (e.g. an option the script does not have yet)
        if stop.code not in (0, None):
            said = [line for line in errors.copy.getvalue().splitlines() if line.strip()]
            error = f"exit {stop.code}" + (f": {said[-1]}" if said else "")
    except Exception as caught:  # noqa: BLE001 - the report records any failure of a benchmark and goes on
        error = f"{type(caught).__name__}: {caught}"
    finally:
        sys.argv = argv
    part["wall_s"] = time.perf_counter() - began
    part["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    lines = [line for line in tee.copy.getvalue().splitlines() if line.strip()]
    part["lines"] = lines
    try:
        part["key"] = float(lines[-1]) if lines else None
    except ValueError:
        part["key"] = None
    if isinstance(figures, dict):
        part["figures"] = figures
    part["status"] = "failed" if error else "passed"
    if error:
        part["error"] = error
    key = "" if part.get("key") is None else f"key {part['key']:.3f}"
    times = ", ".join(
        f"{name[:-2]} {value * 1000:.1f} ms"
        for name, value in (part.get("figures") or {}).items()
        if name.endswith("_s") and isinstance(value, (int, float))
    )
    memory = "" if part["peak_gpu_memory_mib"] is None else f"peak {part['peak_gpu_memory_mib']:.0f} MiB"
    part["summary"] = "; ".join(x for x in (key, times, memory, error or "") if x)
    return part


# -------------------------------------------------------------------------------------------------------- autocast


def blob_batch(batch: int, size: int, classes: int = 3, seed: int = 0) -> tuple[Any, Any]:
    """CT-like 3D inputs in [0, 1]: ``classes - 1`` bright balls of distinct intensities on noise, and their labels."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    images = 0.2 + 0.05 * torch.randn(batch, 1, size, size, size, generator=generator)
    labels = torch.zeros(batch, 1, size, size, size, dtype=torch.long)
    for b in range(batch):
        for value in range(1, classes):
            centre = torch.randint(size // 4, 3 * size // 4, (3, 1, 1, 1), generator=generator).float()
            radius = size / 8 + float(torch.rand(1, generator=generator)) * size / 8
            inside = ((grid - centre) ** 2).sum(0) <= radius**2
            labels[b, 0][inside] = value
            images[b, 0][inside] += 0.25 * value
    return images.clamp(0, 1), labels


def _mean_cross_entropy(logits, label):
    import torch.nn.functional as F

    return F.cross_entropy(logits, label[:, 0].long())  # autocast runs cross_entropy in float32 anyway


def gradient_sign_agreement(
    network,
    image,
    label,
    dtypes: Sequence[str] = ("float16", "bfloat16"),
    reductions: Sequence[str] = ("sum", "mean"),
) -> dict[str, Any]:
    """Share of input-gradient signs that agree with strict fp32, per autocast dtype and loss reduction.

    The reference is fp32 with TF32 off (``allow_tf32`` False for cuDNN and matmul); ``tf32`` is the CUDA default
    (TF32 on, no autocast); ``fp32_rerun`` is the reference computed again (cuDNN may pick non-deterministic kernels,
    which sets a floor on agreement). Each gradient is the package's :func:`input_gradient` in
    :func:`attack_mode` (eval mode), with ``summed_cross_entropy`` (``sum``, the attacks' default) or the mean
    cross-entropy (``mean``: its 1/N per-voxel gradient underflows in fp16). A sign "agrees" when ``sign(g)`` equals
    ``sign(g_fp32)`` (so a zeroed gradient disagrees unless fp32 is zero there too).

    Args:
        network: the model, on its device.
        image: ``(B, C, *spatial)`` float32 batch on the same device.
        label: ``(B, 1, *spatial)`` class indices.
        dtypes: autocast dtypes to compare (``float16``, ``bfloat16``); ``tf32`` is added on CUDA.
        reductions: ``sum`` and/or ``mean``.

    Returns:
        ``{"reductions": {reduction: {variant: {"agreement", "zero_share", "seconds"}}}, "reference_zero_share"...}``
    """
    import torch

    from monai_advseg.attacks import attack_mode, input_gradient, summed_cross_entropy

    device = image.device
    losses = {"sum": summed_cross_entropy, "mean": _mean_cross_entropy}
    cudnn_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    def gradient(dtype: str | None, reduction: str, tf32: bool = False):
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        autocast = torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype else contextlib.nullcontext()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        with attack_mode(network) as module, autocast:
            grad = input_gradient(module, image, label, losses[reduction])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return grad.float(), time.perf_counter() - began

    result: dict[str, Any] = {"device": str(device), "shape": list(image.shape), "reductions": {}}
    try:
        gradient(None, reductions[0])  # warm-up: kernel selection and allocator, outside the timings
        for reduction in reductions:
            reference, seconds = gradient(None, reduction)
            sign = reference.sign()
            rows: dict[str, Any] = {"fp32": {"agreement": 1.0, "zero_share": _share(sign == 0), "seconds": seconds}}
            variants = [("fp32_rerun", None, False)] + [(d, d, False) for d in dtypes]
            if device.type == "cuda":
                variants.append(("tf32", None, True))
            for name, dtype, tf32 in variants:
                grad, seconds = gradient(dtype, reduction, tf32)
                rows[name] = {
                    "agreement": _share(grad.sign() == sign),
                    "zero_share": _share(grad == 0),
                    "seconds": seconds,
                }
                del grad
            result["reductions"][reduction] = rows
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
    parts = [
        f"{reduction} {name} {row['agreement']:.4f}"
        for reduction, rows in result["reductions"].items()
        for name, row in rows.items()
        if name in dtypes
    ]
    result["summary"] = "sign agreement with fp32: " + ", ".join(parts)
    return result


def _share(mask) -> float:
    return float(mask.float().mean())


def autocast_check(device: str, size: int, batch: int, channels: Sequence[int]) -> dict[str, Any]:
    """:func:`gradient_sign_agreement` on the abdomen bundle's 3D U-Net (random weights, seed 0, eval mode)."""
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    target = torch.device(device)
    strides = [2] * (len(channels) - 1)
    network = UNet(3, 1, 3, channels=list(channels), strides=strides, num_res_units=2, norm="batch").to(target)
    image, label = blob_batch(batch, size)
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    result = gradient_sign_agreement(network, image.to(target), label.to(target))
    result["network"] = {"name": "UNet", "channels": list(channels), "strides": strides, "num_res_units": 2}
    if target.type == "cuda":
        result["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(target) / 2**20
    return result


# ---------------------------------------------------------------------------------------------------------- bundle


def bundle_datalist(data: Path) -> dict[str, list[dict[str, str]]]:
    """Train on the long TotalSegmentator example CT, validate and sweep on the short one (pipeline check only:
    the short CT is a part of the long one's scan and the labels are TotalSegmentator predictions)."""
    nifti = data / "ct_totalseg_example" / "nifti"
    return {
        "training": [
            {"image": str(nifti / "example_ct.nii.gz"), "label": str(nifti / "example_seg_fast_force_split.nii.gz")}
        ],
        "validation": [{"image": str(nifti / "example_ct_sm.nii.gz"), "label": str(nifti / "example_seg.nii.gz")}],
    }


def bundle_check(
    data: Path,
    work: Path,
    device: str,
    epochs: int,
    epsilons: Sequence[float],
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the abdomen bundle briefly with ``gpu_pipeline`` and AMP on ``device``, then run its robustness sweep.

    The settings are given as a user types them on the command line (``"true"``), through MONAI's
    ``ConfigWorkflow``, which is what ``python -m monai.bundle run`` builds. Returns the timings, the peak GPU
    memory of each run, the device of the cached volumes and the Dice / Jaccard per eps of ``robustness.json``.
    """
    import torch
    from monai.bundle import ConfigWorkflow

    root = REPO_ROOT / "bundles" / BUNDLE
    configs = root / "configs"
    work.mkdir(parents=True, exist_ok=True)
    settings = {
        "datalist": bundle_datalist(data),
        "device": device,
        "gpu_pipeline": "true",
        "amp": "true",
        "epochs": epochs,
        "val_interval": epochs,
        "batch_size": 1,
        "num_samples": 2,
        "progress": "false",
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
        "overwrite": "true",
        **(overrides or {}),
    }
    cuda = torch.device(device).type == "cuda"
    part: dict[str, Any] = {"device": device, "epochs": epochs, "epsilons": list(epsilons)}
    part["datalist"] = settings["datalist"]

    def run(files: list[Path], **extra) -> tuple[ConfigWorkflow, float, float | None]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        flow = ConfigWorkflow(
            config_file=[str(f) for f in files],
            meta_file=str(configs / "metadata.json"),
            logging_file=str(configs / "logging.conf"),
            workflow_type="train",
            bundle_root=str(root),
            **{**settings, **extra},
        )
        flow.initialize()
        flow.run()
        flow.finalize()
        seconds = time.perf_counter() - began
        return flow, seconds, (torch.cuda.max_memory_allocated() / 2**20 if cuda else None)

    train, part["train_s"], part["train_peak_gpu_memory_mib"] = run([configs / "train.json"])
    cached = train.parser.get_parsed_content("validate#dataset")[0]["image"]
    part["cached_image_device"] = str(cached.device)
    part["cached_image_shape"] = list(cached.shape)
    part["train_loss"] = float(train.parser.get_parsed_content("train#trainer").state.output[0]["loss"])
    scaler = train.parser.get_parsed_content("train#trainer").scaler
    part["grad_scaler"] = None if scaler is None else float(scaler.get_scale())
    sweep_dir = work / "robustness"
    _, part["sweep_s"], part["sweep_peak_gpu_memory_mib"] = run(
        [configs / "train.json", configs / "robust_evaluate.json"],
        epsilons=list(epsilons),
        output_dir=str(sweep_dir),
    )
    report = json.loads((sweep_dir / "robustness.json").read_text())
    part["robustness"] = [
        {"eps_levels": row["eps_levels"], "mean_dice": row["mean_dice"], "mean_jaccard": row["mean_jaccard"]}
        for row in report["metrics"]
    ]
    part["robustness_timings"] = report["timings"]
    dice = ", ".join(f"{row['eps_levels']:g}: {row['mean_dice']:.3f}" for row in part["robustness"])
    memory = part["sweep_peak_gpu_memory_mib"]
    part["summary"] = (
        f"cached on {part['cached_image_device']}; train {part['train_s']:.0f} s, sweep {part['sweep_s']:.0f} s"
        + ("" if memory is None else f" (peak {memory:.0f} MiB)")
        + f"; Dice by eps {dice}"
    )
    return part


# ----------------------------------------------------------------------------------------------------------- tests


def junit_summary(path: Path) -> dict[str, Any]:
    """Counts, failures and collection errors of a pytest JUnit XML report."""
    if not path.is_file():
        return {"status": "failed", "summary": f"no JUnit report at {path}", "passed": 0}
    root = ElementTree.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, skipped = [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failures.append({"test": name, "message": (case.find("failure").get("message") or "")[:500]})
        elif case.find("error") is not None:
            counts["errors"] += 1  # collection errors and fixture errors
            failures.append({"test": name, "message": (case.find("error").get("message") or "")[:500]})
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
            skipped.append({"test": name, "message": (case.find("skipped").get("message") or "")[:300]})
        else:
            counts["passed"] += 1
    status = "passed" if counts["failed"] == counts["errors"] == 0 and counts["passed"] > 0 else "failed"
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v or k == "passed")
    return {"status": status, **counts, "failures": failures, "skips": skipped, "summary": summary}


# ---------------------------------------------------------------------------------------------------------- report


def collect(parts: Path) -> dict[str, Any]:
    """Merge the parts of ``parts`` into the check's JSON.

    A step ``NAME`` may leave ``NAME.json`` (its result), ``NAME.rc`` (``exit-code seconds``, written by the shell
    script after the step) and ``NAME.log`` (its output). A step with a ``.json`` but no ``.rc`` is still running or
    was killed; a non-zero exit code fails the step whatever its JSON says (124 is ``timeout``'s).
    """
    result: dict[str, Any] = {"format": SCHEMA, "steps": {}}
    names = sorted({p.stem for p in parts.iterdir() if p.suffix in (".json", ".rc")})
    for name in names:
        step: dict[str, Any] = {}
        json_path, rc_path, log_path = parts / f"{name}.json", parts / f"{name}.rc", parts / f"{name}.log"
        if json_path.is_file():
            try:
                step["result"] = json.loads(json_path.read_text())
            except json.JSONDecodeError as error:
                step["result"] = {"status": "failed", "error": f"unreadable part: {error}"}
        if rc_path.is_file():
            fields = rc_path.read_text().split()
            step["rc"] = int(fields[0])
            step["seconds"] = float(fields[1]) if len(fields) > 1 else None
        own = step.get("result", {}).get("status")
        if "rc" not in step:
            step["status"] = "not finished"
        elif step["rc"] == 124:
            step["status"] = "timed out"
        elif step["rc"] != 0:
            step["status"] = "failed"
        else:
            step["status"] = own or "passed"
        if step["status"] not in ("passed", "absent") and log_path.is_file():
            step["log_tail"] = log_path.read_text(errors="replace")[-3000:]
        result["steps"][name.split("_", 1)[-1] if name[:2].isdigit() else name] = step
    environment_step = result["steps"].get("env", {}).get("result")
    if environment_step:
        result["environment"] = environment_step
    result["ok"] = bool(result["steps"]) and all(s["status"] in ("passed", "absent") for s in result["steps"].values())
    return result


def summary_table(report: dict[str, Any]) -> str:
    """The summary table (plain text): one row per step with its status, time and key figures."""
    rows = [("step", "status", "seconds", "figures")]
    for name, step in report["steps"].items():
        seconds = "" if step.get("seconds") is None else f"{step['seconds']:.0f}"
        figures = step.get("result", {}).get("summary", "")
        rows.append((name, step["status"], seconds, figures))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    verdict = "all steps passed" if report["ok"] else "SOME STEPS FAILED (see the JSON's log_tail)"
    return "\n".join([*lines, verdict])


def markdown(report: dict[str, Any]) -> str:
    """The measured section of ``docs/results/gpu.md`` from the check's JSON."""
    env = report.get("environment", {})
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in env.get("gpus", [])) or "none"
    out = [
        f"## Run of {env.get('date_utc', '?')} UTC",
        "",
        f"GPU: {gpus}; driver {env.get('driver')}; torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN "
        f"{env.get('cudnn')}; MONAI {env.get('monai')}; Python {env.get('python')}; commit {env.get('commit', '?')}.",
        "",
        "| step | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    for name, step in report["steps"].items():
        seconds = "" if step.get("seconds") is None else f"{step['seconds']:.0f}"
        figures = step.get("result", {}).get("summary", "").replace("|", "\\|")
        out.append(f"| {name} | {step['status']} | {seconds} | {figures} |")
    sign = report["steps"].get("autocast", {}).get("result", {})
    if sign.get("reductions"):
        out += ["", f"Input-gradient sign agreement with strict fp32 (shape {sign.get('shape')}):", ""]
        out += ["| loss | variant | agreement | zero share |", "|---|---|---|---|"]
        for reduction, rows in sign["reductions"].items():
            for variant, row in rows.items():
                out.append(f"| {reduction} | {variant} | {row['agreement']:.5f} | {row['zero_share']:.5f} |")
    for name, step in report["steps"].items():
        lines = step.get("result", {}).get("lines")
        if lines:
            out += ["", f"`{name}` printed:", "", "```", *lines, "```"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("setup", help="unpack the carried wheels this Python lacks")
    setup.add_argument("wheels", type=Path)
    setup.add_argument("site", type=Path)
    for name in ("env", "bench", "autocast", "bundle", "tests"):
        sub = commands.add_parser(name)
        sub.add_argument("--part", type=Path, required=True, help="where to write this step's JSON")
    commands.choices["env"].add_argument("--commit-file", type=Path, default=REPO_ROOT / ".gpu_bundle" / "commit.txt")
    commands.choices["bench"].add_argument("script", type=Path)
    commands.choices["bench"].add_argument("args", nargs=argparse.REMAINDER)
    auto = commands.choices["autocast"]
    auto.add_argument("--device", default="cuda")
    auto.add_argument("--size", type=int, default=128)
    auto.add_argument("--batch", type=int, default=2)
    auto.add_argument("--channels", type=json.loads, default=[16, 32, 64, 128, 256])
    bundle = commands.choices["bundle"]
    bundle.add_argument("--data", type=Path, required=True, help="folder holding ct_totalseg_example/")
    bundle.add_argument("--work", type=Path, required=True)
    bundle.add_argument("--device", default="cuda")
    bundle.add_argument("--epochs", type=int, default=20)
    bundle.add_argument("--epsilons", type=json.loads, default=[1, 4, 16])
    bundle.add_argument("--overrides", type=json.loads, default={}, help="more bundle settings, as JSON")
    commands.choices["tests"].add_argument("--junit", type=Path, required=True)
    report = commands.add_parser("report", help="merge the parts into one JSON and print the summary table")
    report.add_argument("--parts", type=Path, required=True)
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--quiet", action="store_true", help="write the JSON, print nothing")
    to_markdown = commands.add_parser("markdown", help="print the results section of docs/results/gpu.md")
    to_markdown.add_argument("json", type=Path)
    size = commands.add_parser("carried-size", help="bytes the device tool would carry; exit 1 over 64 MiB")
    size.add_argument("carry", nargs="*", help="the ignored paths named in carry")
    args = parser.parse_args(argv)

    if args.command == "carried-size":
        sizes = carried_bytes(REPO_ROOT, args.carry)
        mib = {key: value / 2**20 for key, value in sizes.items()}
        print(f"working tree {mib['tree']:.1f} MiB + carried {mib['carry']:.1f} MiB = {mib['total']:.1f} MiB", end="")
        print(" (limit 64 MiB)")
        return 0 if sizes["total"] <= CARRY_LIMIT_BYTES else 1

    if args.command == "setup":
        done = unpack_missing_wheels(args.wheels, args.site)
        for key, names in done.items():
            print(f"{key}: {', '.join(names) or '-'}")
        return 0
    if args.command == "report":
        merged = collect(args.parts)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(_finite(merged), indent=2) + "\n")
        tmp.replace(args.out)  # a killed run still leaves the last complete JSON
        if not args.quiet:
            print(summary_table(merged))
            print(f"wrote {args.out}")
        return 0
    if args.command == "markdown":
        print(markdown(json.loads(args.json.read_text())), end="")
        return 0
    if args.command == "env":
        part = environment(args.commit_file)
    elif args.command == "bench":
        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        part = run_benchmark(args.script.resolve(), rest)
    elif args.command == "autocast":
        part = autocast_check(args.device, args.size, args.batch, args.channels)
    elif args.command == "bundle":
        part = bundle_check(args.data, args.work, args.device, args.epochs, args.epsilons, args.overrides)
    else:
        part = junit_summary(args.junit)
    part.setdefault("status", "passed")
    write_part(args.part, part)
    print(part.get("summary", ""))
    return 0 if part["status"] in ("passed", "absent") else 1


if __name__ == "__main__":
    sys.exit(main())
