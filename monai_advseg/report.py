"""Command line for robustness reports: overlay the Dice / Jaccard vs epsilon curves of several models.

Usage::

    python -m monai_advseg.report compare unet/robustness.json nlcen/robustness.json -o figure.png \\
        --labels "U-Net" "NLCEN" --title "JSRT lungs, targeted I-FGSM"

Each JSON is a ``robustness.json`` written by :class:`monai_advseg.engines.RobustnessEvaluator`; the figure shows one
curve per model with its clean score as a dashed line of the same colour (the NLCE paper's figures 4, 5 and 8).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from monai_advseg.cli import DEBUG_HELP, entry_point
from monai_advseg.data import InputError
from monai_advseg.handlers.robustness_report import load_robustness_report, plot_robustness

__all__ = ["compare", "main"]


def compare(
    reports: Sequence[str | Path],
    output: str | Path,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Plot several ``robustness.json`` reports into one PNG.

    Args:
        reports: paths of ``robustness.json`` files.
        output: the PNG to write.
        labels: legend entries, one per report (default: the parent folder name of each file).
        title: figure title.
        overwrite: replace an existing ``output``.

    Returns:
        The written path.

    Raises:
        FileExistsError: when ``output`` exists and ``overwrite`` is False.
        InputError: naming each report that is missing, not JSON or not a robustness report (all of them at once).
        ValueError: on a label count that does not match.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: already exists; pass --overwrite to replace it")
    if labels is not None and len(labels) != len(reports):
        raise ValueError(f"--labels: {len(labels)} given for {len(reports)} reports; give one per report")
    loaded, problems = [], []
    for path in reports:
        try:
            loaded.append(load_robustness_report(path))
        except FileNotFoundError:
            problems.append(f"{path}: report file not found")
        except json.JSONDecodeError as error:  # its message names no file
            problems.append(f"{path}: not a JSON file ({error})")
        except (ValueError, OSError) as error:
            text = f"{error.filename}: {error.strerror}" if isinstance(error, OSError) else str(error)
            problems.append(text if text.startswith(str(path)) else f"{path}: {text}")
    if problems:
        raise InputError(problems)
    if labels is None:
        labels = [Path(path).resolve().parent.name or str(path) for path in reports]
    return plot_robustness(loaded, output, labels=list(labels), title=title)


# The command only reads reports and writes one figure: any ValueError / OSError is about its input or output files
# (a report that is not one, a label count, an existing output); ImportError is a missing plotting package.
@entry_point(input_errors=(ValueError, OSError, ImportError))
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m monai_advseg.report``; returns the exit status (1 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m monai_advseg.report", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmp = commands.add_parser("compare", help="overlay the robustness curves of several models in one PNG")
    cmp.add_argument("reports", nargs="+", type=Path, help="robustness.json files")
    cmp.add_argument("-o", "--output", required=True, type=Path, help="the PNG to write")
    cmp.add_argument("--labels", nargs="+", help="one legend entry per report (default: each file's folder name)")
    cmp.add_argument("--title", help="figure title")
    cmp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    cmp.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    path = compare(args.reports, args.output, labels=args.labels, title=args.title, overwrite=args.overwrite)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
