"""Does the shipped worst case finish the CXR bundle's validation split at 96x96 over the paper's 18 eps in an hour?

Runs the CXR bundle itself (``train.json`` + ``robust_evaluate.json``, ``--attack worst_case``, every other setting
the bundle's: its dataloader, ``max_batch``, the worst case's defaults and its default diagnostics) on the first
``--cases`` validation cases of the bundle's own split, for trained networks given as ``name=checkpoint_dir``
(each folder holds the ``model.pt`` the bundle loads). It times the evaluation's parts and extrapolates linearly to
the whole validation split: every part scales with the cases except the black-box check, which attacks only the
first ``black_box_cases`` cases (a fixed cost, scaled up when fewer cases were measured). The machine is shared, so
the figure is pessimistic on a loaded one; the load average during the run is printed, and so is the projection from
the process's CPU time spread over its threads (what the run would take on cores no other job uses). On a loaded
2-core machine use ``OMP_NUM_THREADS=1``: two OpenMP threads wait for each other whenever one is descheduled
(measured at load 11: a U-Net forward + backward took 27 times its CPU time with 2 threads, 5.6 times with 1).

Last line: the slowest network's projected hours for the whole split (target <= 1). With ``--json`` the measurements
are also written there (``docs/results/worst_case_budget.json`` feeds the "Budget" section of
``docs/results/worst_case.md``, rendered by ``benchmarks/worst_case_results.py``).

    OMP_NUM_THREADS=2 nice -n 5 python benchmarks/worst_case_budget.py --cases 4 \\
        --networks unet=/tmp/worst_runs/cxr96/unet nlcen=/tmp/worst_runs/cxr96/nlcen
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lung_cxr_segmentation"
DATA = REPO.parent / "shared" / "data" / "cxr_lung_montgomery_shenzhen"


def _timed(owner, name: str, clock: list[float]) -> None:
    """Wrap ``owner.name`` so that its wall time adds up in ``clock[0]`` and its CPU time in ``clock[1]``."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        began, cpu = time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            clock[0] += time.perf_counter() - began
            clock[1] += time.process_time() - cpu

    setattr(owner, name, wrapper)


def measure(network: str, checkpoints: Path, cases: int, size: int, data: Path, out: Path) -> dict:
    """One bundle run of the worst case on the first ``cases`` validation cases; its timings and the split's size."""
    configs = [str(BUNDLE / "configs" / name) for name in ("train.json", "robust_evaluate.json")]
    began = time.perf_counter()
    flow = ConfigWorkflow(
        config_file=configs,
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"),
        workflow_type="train",
        bundle_root=str(BUNDLE),
        dataset_dir=str(data),
        ckpt_dir=str(checkpoints),
        output_dir=str(out),
        network=network,
        attack="worst_case",
        spatial_size=[size, size],
        val_items=f"$@split[1][:{cases}]",
        progress=False,
    )
    flow.initialize()
    evaluator = flow.parser.get_parsed_content("evaluator")
    split = len(flow.parser.get_parsed_content("split")[1])
    black_box = [0.0, 0.0]
    _timed(evaluator.diagnostics.black_box, "sweep", black_box)
    setup = time.perf_counter() - began
    load = os.getloadavg()
    began, cpu = time.perf_counter(), time.process_time()
    flow.run()
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    load = [max(a, b) for a, b in zip(load, os.getloadavg(), strict=True)]
    timings = evaluator.results["timings"]
    return {
        "split": split,
        "cases": min(cases, split),
        "black_box_cases": evaluator.diagnostics.black_box_cases,
        "setup": setup,
        "run": seconds,
        "attack": timings["attack_seconds"],
        "diagnostics": timings["diagnostics_seconds"],
        "black_box": black_box[0],
        "cpu": cpu,
        "black_box_cpu": black_box[1],
        "load": load,
        "apgd_steps": evaluator.attack_spec.apgd_steps,
        "queries": evaluator.diagnostics.black_box.queries,
        "passes": sum(evaluator.step_counts()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", required=True, help="name=checkpoint_dir, name a bundle network")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements to this file")
    args = parser.parse_args(argv)
    print(f"threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    hours = []
    record = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": torch.get_num_threads(),
        "niceness": os.nice(0),
        "size": args.size,
        "networks": {},
    }
    for entry in args.networks:
        name, _, folder = entry.partition("=")
        with tempfile.TemporaryDirectory(prefix=f"worst_case_budget_{name}_") as out:
            m = measure(name, Path(folder), args.cases, args.size, args.data, Path(out))
        per_case = (m["run"] - m["black_box"]) / m["cases"]
        # the black box attacks the first black_box_cases cases of the whole run: scale it to that many
        searched = min(m["black_box_cases"], m["cases"])
        full_search = min(m["black_box_cases"], m["split"]) / searched if searched else 0.0
        projected = per_case * m["split"] + m["black_box"] * full_search + m["setup"] / m["cases"] * m["split"]
        # the CPU time the run took, spread over the threads: the wall time on cores no other job uses
        threads = torch.get_num_threads()
        cpu_per_case = (m["cpu"] - m["black_box_cpu"]) / m["cases"] / threads
        idle = cpu_per_case * m["split"] + m["black_box_cpu"] * full_search / threads
        hours.append(projected / 3600)
        record["networks"][name] = {
            **m,
            "per_case": per_case,
            "projected_seconds": projected,
            "cpu_per_case_per_thread": cpu_per_case,
            "projected_idle_seconds": idle,
        }
        print(
            f"{name}: {m['cases']} of {m['split']} validation cases in {m['run']:.0f} s (attack {m['attack']:.0f} s, "
            f"diagnostics {m['diagnostics']:.0f} s of which black box {m['black_box']:.0f} s on "
            f"{min(m['black_box_cases'], m['cases'])} cases x {m['queries']} queries; setup {m['setup']:.0f} s); "
            f"{per_case:.0f} s per case without the black box; apgd_steps {m['apgd_steps']}, at most "
            f"{m['passes']} gradient passes per case; load average (max of before/after, 1/5/15 min) "
            f"{'/'.join(f'{v:.1f}' for v in m['load'])}; projected for the split: {projected / 60:.1f} min; CPU "
            f"{m['cpu']:.0f} s ({cpu_per_case:.0f} s per case and thread): {idle / 60:.1f} min on idle cores",
            flush=True,
        )
    top = max(hours)
    record["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"projected hours for the CXR validation split at {args.size}x{args.size}, 18 eps: {top:.2f} (target <= 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
