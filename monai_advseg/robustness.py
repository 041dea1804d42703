"""``python -m monai_advseg robustness``: the NLCE paper's robustness sweep on any MONAI bundle, unmodified.

Usage::

    python -m monai_advseg robustness --bundle_root BUNDLE --dataset_dir DATA --output_dir OUT \\
        [--epsilons "[...]"] [--epsilon_unit levels|hu|input] [--attack NAME] [--attack_loss default|bundle] \\
        [--config_file ...] [--ckpt PATH] [--device ...] [--max_cases N] [--progress true|false] \\
        [--overwrite true|false] [--id#path value ...]
    python -m monai_advseg robustness --certify --sigma S [--n0 N0] [--n N] [--certify_alpha A] [--radii "[...]"] \
        [--attack_radii "[...]"] --bundle_root BUNDLE --dataset_dir DATA --output_dir OUT [...]

With ``--certify`` the bundle's Gaussian-smoothed model is certified (randomized smoothing) instead of the sweep:
``certify.json`` / ``.csv`` / ``_cases.csv`` / ``.png`` / ``_gallery.png``. ``--sigma``, ``--radii`` and
``--attack_radii`` are L2 norms in ``--epsilon_unit``; every unit is a fixed linear factor of the input, so an L2
norm converts with the same factor as an epsilon.

Further ``--id#path value`` pairs override the bundle's configs, as with ``python -m monai.bundle run``. Bad input
ends the command with ``error: <file or value>: <what is wrong>`` and exit status 1 before anything is written.
"""

from __future__ import annotations

import argparse
import ast
import math
from collections.abc import Sequence
from typing import Any

from monai_advseg.cli import DEBUG_HELP, entry_point
from monai_advseg.data import InputError

__all__ = ["format_certify_table", "format_table", "main"]


def _literal(text: str, name: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise InputError(f"{name}: {text!r}: not a Python / JSON literal") from None


def _number_list(text: str | None, name: str, length: int | None = None) -> list[float] | None:
    if text is None:
        return None
    value = _literal(text, name)
    values = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) or (
        length is not None and len(values) != length
    ):
        shape = f"{length} numbers" if length else "numbers"
        raise InputError(f'{name}: {text!r}: expected a list of {shape}, e.g. "[1, 2, 4]"')
    return [float(v) for v in values]


def _flag(text: str | None, name: str) -> bool | None:
    if text is None:
        return None
    from monai_advseg.engines.flags import as_flag

    try:
        return as_flag(text, name)
    except ValueError:
        raise InputError(f"{name}: {text!r}: expected true or false") from None


def _overrides(extra: Sequence[str]) -> dict[str, Any]:
    pairs, index = {}, 0
    while index < len(extra):
        key = extra[index]
        if not key.startswith("--") or index + 1 >= len(extra) or extra[index + 1].startswith("--"):
            raise InputError(f"{key}: unknown argument; config overrides are given as --id#path value")
        value = extra[index + 1]
        try:
            pairs[key[2:].replace("::", "#")] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pairs[key[2:].replace("::", "#")] = value  # a plain string, as monai.bundle run takes it
        index += 2
    return pairs


def format_table(results: dict[str, Any]) -> str:
    """The summary rows as a Markdown table: eps in levels, input units and HU, Dice and Jaccard."""
    units = results.get("config", {}).get("epsilon_units", {})
    hu = units.get("hu")
    lines = [
        "| setting | eps (levels) | eps (input) | eps (HU) | steps | mean Dice | mean Jaccard | cases |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(results["metrics"]):
        eps_hu = 0.0 if index == 0 else (hu[index - 1] if hu else None)

        def cell(value: float | None, digits: str = ".4f") -> str:
            return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, digits)

        lines.append(
            f"| {row['setting']} | {row['eps_levels']:g} | {cell(row['eps'], '.5g')} | {cell(eps_hu, '.4g')} | "
            f"{row['steps']} | {cell(row['mean_dice'])} | {cell(row['mean_jaccard'])} | {row['n_cases']} |"
        )
    return "\n".join(lines)


def format_certify_table(results: dict[str, Any]) -> str:
    """The certification's rows as a Markdown table: radius in input units (and HU), certified Dice and fraction."""
    units = results.get("config", {}).get("certify_units", {}).get("radii", {}) or {}
    hu = units.get("hu")

    def cell(value: float | None, digits: str = ".4f") -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, digits)

    lines = [
        "| radius (input) | radius (HU) | certified Dice | certified Jaccard | certified fraction | smoothed Dice "
        "under L2 PGD | base Dice under L2 PGD |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(results["metrics"]):
        radius_hu = hu[index] if hu and index < len(hu) else None
        lines.append(
            f"| {row['radius']:.5g} | {cell(radius_hu, '.4g')} | {cell(row['certified_dice'])} | "
            f"{cell(row['certified_jaccard'])} | {cell(row['certified_fraction'])} | "
            f"{cell(row['attack_dice_smoothed'])} | {cell(row['attack_dice_base'])} |"
        )
    check = results.get("check", {})
    base = results.get("base", {}).get("dice")
    lines.append(
        f"base model clean Dice {cell(base)}; abstain rate {cell(results['metrics'][0]['abstain_rate'])}; check "
        + (
            "not run (no --attack_radii)"
            if check.get("passed") is None
            else ("passed" if check["passed"] else "FAILED")
        )
    )
    return "\n".join(lines)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m monai_advseg robustness``; returns the exit status (1 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_advseg robustness", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--bundle_root", required=True, help="the bundle folder (with configs/)")
    parser.add_argument("--output_dir", required=True, help="report folder (robustness.* or certify.*)")
    parser.add_argument("--dataset_dir", help="overrides the bundle's dataset_dir")
    parser.add_argument("--epsilons", help='strengths in --epsilon_unit, e.g. "[1, 2, 4]" (default: the paper sweep)')
    parser.add_argument(
        "--epsilon_unit", default="levels", help="levels (default, of 255 of the input range) | hu | input"
    )
    parser.add_argument(
        "--alpha", type=float, help="step size of iterative attacks in --epsilon_unit (default 1 level)"
    )
    parser.add_argument("--attack", default="ifgsm_targeted", help="an attack name (default ifgsm_targeted)")
    parser.add_argument("--steps", type=int, help="fixed iterations (default: the Kurakin schedule)")
    parser.add_argument(
        "--attack_loss",
        default="default",
        help="default (cross-entropy, or per-channel BCE for sigmoid bundles) | bundle (the bundle's `loss`)",
    )
    parser.add_argument("--config_file", help="the bundle's config file(s), e.g. \"['configs/train.yaml']\"")
    parser.add_argument("--ckpt", help="weights (default <ckpt_dir>/model.pt)")
    parser.add_argument("--device", help="overrides the bundle's device, e.g. cpu or cuda:0")
    parser.add_argument("--max_cases", type=int, help="evaluate the first N items of validate#dataset")
    parser.add_argument("--progress", help="true | false (default: on a terminal)")
    parser.add_argument("--overwrite", default="false", help="replace an existing report (true | false)")
    parser.add_argument("--intensity_range", help='network-input range "[lo, hi]" where the preprocessing has none')
    parser.add_argument("--max_batch", type=int, help="at most this many samples per forward")
    parser.add_argument("--seed", type=int, default=0, help="seed of random attacks")
    certify = parser.add_argument_group("certification (randomized smoothing) instead of the sweep")
    certify.add_argument("--certify", action="store_true", help="certify the smoothed model; writes certify.*")
    certify.add_argument("--sigma", type=float, help="noise std in --epsilon_unit (an L2 scale; required)")
    certify.add_argument("--n0", type=int, default=10, help="noisy samples that choose each voxel's class (10)")
    certify.add_argument("--n", type=int, default=100, help="noisy samples that bound its probability (100)")
    certify.add_argument(
        "--certify_alpha", type=float, default=0.001, help="family-wise error level over a case's voxels (0.001)"
    )
    certify.add_argument("--radii", help='L2 radii in --epsilon_unit, e.g. "[0, 0.1, 0.2]" (default 0 .. 2 sigma)')
    certify.add_argument(
        "--attack_radii", help="L2 radii at which L2 PGD attacks the base model (--steps, default 20) for the check"
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args, extra = parser.parse_known_args(argv)
    config_file = None
    if args.config_file is not None:
        config_file = args.config_file
        if args.config_file.lstrip().startswith("["):
            config_file = _literal(args.config_file, "--config_file")
    from monai_advseg.workflows import bundle_robustness

    results = bundle_robustness(
        args.bundle_root,
        args.output_dir,
        dataset_dir=args.dataset_dir,
        epsilons=_number_list(args.epsilons, "--epsilons"),
        epsilon_unit=args.epsilon_unit,
        alpha=args.alpha,
        attack=args.attack,
        steps=args.steps,
        config_file=config_file,
        ckpt=args.ckpt,
        device=args.device,
        max_cases=args.max_cases,
        progress=_flag(args.progress, "--progress"),
        overwrite=bool(_flag(args.overwrite, "--overwrite")),
        intensity_range=_number_list(args.intensity_range, "--intensity_range", length=2),
        max_batch=args.max_batch,
        seed=args.seed,
        overrides=_overrides(extra),
        attack_loss=args.attack_loss,
        certify=args.certify,
        sigma=args.sigma,
        n0=args.n0,
        n=args.n,
        certify_alpha=args.certify_alpha,
        radii=_number_list(args.radii, "--radii"),
        attack_radii=_number_list(args.attack_radii, "--attack_radii"),
    )
    print(format_certify_table(results) if args.certify else format_table(results))
    print(f"reports in {args.output_dir}")
    return 0
