"""``python -m monai_advseg robustness``: the NLCE paper's robustness sweep on any MONAI bundle, unmodified.

Usage::

    python -m monai_advseg robustness --bundle_root BUNDLE --dataset_dir DATA --output_dir OUT \\
        [--epsilons "[...]"] [--epsilon_unit levels|hu|input] [--attack NAME] [--config_file ...] [--ckpt PATH] \\
        [--device ...] [--max_cases N] [--progress true|false] [--overwrite true|false] [--id#path value ...]

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

__all__ = ["format_table", "main"]


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


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m monai_advseg robustness``; returns the exit status (1 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_advseg robustness", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--bundle_root", required=True, help="the bundle folder (with configs/)")
    parser.add_argument("--output_dir", required=True, help="report folder (robustness.csv/.json/.png)")
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
    parser.add_argument("--config_file", help="the bundle's config file(s), e.g. \"['configs/train.yaml']\"")
    parser.add_argument("--ckpt", help="weights (default <ckpt_dir>/model.pt)")
    parser.add_argument("--device", help="overrides the bundle's device, e.g. cpu or cuda:0")
    parser.add_argument("--max_cases", type=int, help="evaluate the first N items of validate#dataset")
    parser.add_argument("--progress", help="true | false (default: on a terminal)")
    parser.add_argument("--overwrite", default="false", help="replace an existing report (true | false)")
    parser.add_argument("--intensity_range", help='network-input range "[lo, hi]" where the preprocessing has none')
    parser.add_argument("--max_batch", type=int, help="at most this many samples per forward")
    parser.add_argument("--seed", type=int, default=0, help="seed of random attacks")
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
    )
    print(format_table(results))
    print(f"reports in {args.output_dir}")
    return 0
