"""The per-case arrays a robustness sweep collects, and their gathering across DDP ranks.

:class:`SweepRecords` is what :class:`~monai_advseg.engines.RobustnessEvaluator` fills batch by batch: case ids,
``(B, 1 + E)`` scores (column 0 clean, ``1 + e`` at the sweep's e-th strength), which cases have no foreground in
their truth, an ensemble's per-case winners, and the time per column. The report is built from them elsewhere
(:func:`~monai_advseg.handlers.robustness_report.build_robustness_report`).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SweepRecords", "case_ids", "gather_across_ranks", "no_foreground"]

SCORES = ("dice", "jaccard", "foreground")


def case_ids(inputs: torch.Tensor, start: int, rank: int) -> list[str]:
    """The cases' file names from the batch's MONAI metadata, else ``[rank<r>_]case_<index>``."""
    meta = getattr(inputs, "meta", None)
    names = meta.get("filename_or_obj") if isinstance(meta, dict) else None
    if isinstance(names, (list, tuple)) and len(names) == inputs.shape[0] and all(isinstance(n, str) for n in names):
        return [str(n) for n in names]
    prefix = f"rank{rank}_" if rank else ""
    return [f"{prefix}case_{start + i:05d}" for i in range(inputs.shape[0])]


def no_foreground(label: torch.Tensor, num_classes: int, multi_label: bool = False) -> torch.Tensor:
    """``(B,)`` booleans (CPU): the case's truth (class indices or one-hot) has no voxel of a class other than 0;
    with ``multi_label`` (one binary channel per label), no voxel of any channel."""
    if multi_label:
        foreground = label.sum(dim=1)
    elif label.shape[1] == num_classes:
        foreground = label[:, 1:].sum(dim=1)
    else:
        foreground = label[:, 0]
    return ~(foreground.flatten(1) > 0).any(dim=1).cpu()


def _per_case_details(details: dict[str, Any], batch: int, count: int) -> dict[str, Any]:
    """An ensemble's per-sample record (sample ``e * B + b``) as per-case rows ``(B, E)``."""
    winners = details["winner"]
    return {
        "winner": [[winners[e * batch + b] for e in range(count)] for b in range(batch)],
        "member_dice": {
            name: values.reshape(count, batch).T.clone() for name, values in details["member_scores"].items()
        },
    }


def _merge_details(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not parts:
        return None
    return {
        "winner": [row for part in parts for row in part["winner"]],
        "member_dice": {name: torch.cat([p["member_dice"][name] for p in parts]) for name in parts[0]["member_dice"]},
    }


class SweepRecords:
    """Per-case scores of one sweep over ``strengths`` epsilons, batch by batch.

    Args:
        strengths: the sweep's number of epsilons E (the arrays have ``1 + E`` columns).
    """

    def __init__(self, strengths: int) -> None:
        self.columns = 1 + strengths
        self.cases: list[str] = []
        self._scores: dict[str, list[torch.Tensor]] = {key: [] for key in SCORES}
        self._empty: list[torch.Tensor] = []
        self._details: list[dict[str, Any]] = []
        self.seconds = torch.zeros(self.columns, dtype=torch.float64)

    def add(
        self,
        cases: list[str],
        scores: dict[str, torch.Tensor],
        empty: torch.Tensor,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record one batch.

        Args:
            cases: the batch's case ids.
            scores: ``{"dice", "jaccard", "foreground"}``, each ``(B, 1 + E)`` on the CPU.
            empty: ``(B,)`` cases without foreground in their truth.
            details: an ensemble's per-sample record (``winner``, ``member_scores`` over samples ``e * B + b``).
        """
        self.cases.extend(cases)
        for key in SCORES:
            self._scores[key].append(scores[key])
        self._empty.append(empty)
        if details:
            self._details.append(_per_case_details(details, len(cases), self.columns - 1))

    def add_attack_seconds(self, seconds: float, steps: list[int]) -> None:
        """Share one attack call's time over the strengths it attacked, by their gradient steps (equally if none)."""
        counts = torch.tensor(steps, dtype=torch.float64)
        shares = counts / counts.sum() if bool(counts.sum() > 0) else torch.full_like(counts, 1 / len(counts))
        self.seconds[1:] += seconds * shares

    def arrays(self) -> dict[str, torch.Tensor]:
        """This rank's ``{"dice", "jaccard", "foreground"}`` ``(N, 1 + E)`` and ``"empty"`` ``(N,)``."""
        arrays = {k: torch.cat(v) if v else torch.empty(0, self.columns) for k, v in self._scores.items()}
        arrays["empty"] = torch.cat(self._empty) if self._empty else torch.empty(0, dtype=torch.bool)
        return arrays

    def gathered(self) -> tuple[list[str], dict[str, torch.Tensor], torch.Tensor, dict[str, Any] | None]:
        """All ranks' ``(cases, arrays, seconds, details)`` under DDP (seconds: the slowest rank's), else this one's."""
        return gather_across_ranks(self.cases, self.arrays(), self.seconds, _merge_details(self._details))


def gather_across_ranks(
    cases: list[str], arrays: dict[str, torch.Tensor], seconds: torch.Tensor, details: dict[str, Any] | None = None
) -> tuple[list[str], dict[str, torch.Tensor], torch.Tensor, dict[str, Any] | None]:
    """Every rank's cases, arrays (concatenated along dim 0, in rank order), the slowest rank's seconds and the
    ensembles' details; the inputs unchanged outside DDP."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return cases, arrays, seconds, details
    # Objects, not tensors: ranks may hold different numbers of cases and gloo / nccl both support this path.
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, (cases, arrays, seconds, details))
    return (
        [c for part in gathered for c in part[0]],
        {key: torch.cat([part[1][key] for part in gathered]) for key in arrays},
        torch.stack([part[2] for part in gathered]).max(dim=0).values,
        _merge_details([part[3] for part in gathered if part[3]]),
    )
