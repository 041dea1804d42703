"""Gate statistics of NLCEN's context encodings: fresh networks under both W_gamma initialisations, and trained runs.

The paper sums the K codeword vectors (``e = sum_k BN_ReLU(e_k)``); with PyTorch's default ``nn.Linear`` init of
``W_gamma`` most gates of a fresh NLCEN start saturated. ``ContextEncoding`` now divides the initial ``W_gamma`` by K
("one_over_k"); "linear_default" multiplies it back, which is exactly the initialisation before that change.

    python benchmarks/nlce_gate_init.py --fresh --seeds 0 1
    python benchmarks/nlce_gate_init.py --runs /tmp/gate_runs/old_s0 /tmp/gate_runs/new_s0 ...

``--runs`` reads each folder's ``log.txt`` (the bundle's console log: validation Dice per epoch) and
``models/model.pt`` (the best validation model), as written by ``python -m monai.bundle run --config_file
bundles/lung_cxr_segmentation/configs/train.json ... --ckpt_dir RUN/models > RUN/log.txt``. Gates are measured on
the bundle's 50 validation images (split seed 0) at ``--size``, in eval mode for trained models and in training mode
(batch statistics) for fresh ones. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from monai_advseg.networks.nets import NLCEN

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "bundles" / "lung_cxr_segmentation" / "configs" / "train.json"


def validation_images(dataset_dir: str, size: int) -> torch.Tensor:
    """The CXR bundle's validation images, prepared as for training (intensity / 255, resized to ``size``)."""
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update({"dataset_dir": dataset_dir, "spatial_size": [size, size]})
    transform = parser.get_parsed_content("preprocessing")
    items = parser.get_parsed_content("val_items")
    return torch.stack([transform(dict(item))["image"].as_tensor() for item in items])


def gate_statistics(net: NLCEN, images: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per level E2..E5: the fraction of gates below 0.05 and above 0.95, and the mean sigmoid derivative."""
    gates: dict[str, torch.Tensor] = {}
    hooks = [
        nlce.encoding.register_forward_hook(lambda m, a, out, i=i: gates.__setitem__(f"E{i + 2}", out.detach()))
        for i, nlce in enumerate(net.nlce)
    ]
    with torch.no_grad():
        net(images)
    for hook in hooks:
        hook.remove()
    return {
        level: {
            "below_0.05": round(float((g < 0.05).float().mean()), 3),
            "above_0.95": round(float((g > 0.95).float().mean()), 3),
            "mean_sigmoid_prime": round(float((g * (1 - g)).mean()), 3),
        }
        for level, g in gates.items()
    }


def fresh(init: str, seed: int) -> NLCEN:
    """A fresh NLCEN as the CXR bundle builds it, with ``W_gamma`` under ``init``."""
    torch.manual_seed(seed)
    net = NLCEN(spatial_dims=2, in_channels=1, out_channels=2, backbone="resnet18")
    if init == "linear_default":
        with torch.no_grad():
            for nlce in net.nlce:
                nlce.encoding.fc.weight.mul_(nlce.encoding.num_codes)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="gate statistics of fresh networks, both inits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--runs", nargs="*", default=[], help="trained run folders (log.txt, models/model.pt)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--dataset-dir", default="/work/shared/data/cxr_lung_montgomery_shenzhen")
    args = parser.parse_args()
    images = validation_images(args.dataset_dir, args.size)
    result: dict = {"val_images": len(images), "size": args.size}
    if args.fresh:
        for init in ("linear_default", "one_over_k"):
            for seed in args.seeds:
                result[f"fresh_{init}_seed{seed}"] = gate_statistics(fresh(init, seed).train(), images)
    for run in map(Path, args.runs):
        dice = [float(v) for v in re.findall(r"Metrics -- val_mean_dice: ([0-9.]+)", (run / "log.txt").read_text())]
        net = fresh("one_over_k", 0)  # the architecture; the weights come from the checkpoint
        net.load_state_dict(torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True))
        result[run.name] = {
            "val_dice_per_epoch": dice,
            "best": max(dice),
            "final": dice[-1],
            "gates_best_model": gate_statistics(net.eval(), images),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
