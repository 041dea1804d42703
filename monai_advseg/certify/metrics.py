"""Certified Dice and Jaccard: lower bounds on a case's score under every L2 perturbation below a radius."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from monai_advseg.certify.smoothing import ABSTAIN

__all__ = ["certified_scores"]


def _truth_indices(truth: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if truth.ndim != labels.ndim or truth.shape[0] != labels.shape[0] or truth.shape[2:] != labels.shape[2:]:
        raise ValueError(
            f"truth {tuple(truth.shape)} must be (B, 1, *spatial) class indices or (B, num_classes, *spatial) one-hot "
            f"matching labels {tuple(labels.shape)}"
        )
    if truth.shape[1] == 1:
        indices = truth[:, 0].long()
    elif truth.shape[1] == num_classes:
        indices = truth.argmax(dim=1)
    else:
        raise ValueError(
            f"truth has {truth.shape[1]} channels; expected 1 (class indices) or num_classes={num_classes}"
        )
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_classes):
        raise ValueError(
            f"truth classes must lie in [0, {num_classes - 1}], got [{int(indices.min())}, {int(indices.max())}]"
        )
    return indices


def certified_scores(
    labels: torch.Tensor,
    radius: torch.Tensor,
    truth: torch.Tensor,
    radii: Sequence[float],
    num_classes: int,
    include_background: bool = False,
) -> dict[str, torch.Tensor]:
    """Certified Dice and Jaccard per case at each radius, from :func:`smoothed_segmentation`'s output.

    At radius ``r`` a voxel counts as predicted class ``k`` only if its label is ``k`` and its certified radius is at
    least ``r`` (at ``r = 0``: every voxel that did not abstain). Every other voxel, abstained or certified below
    ``r``, counts as wrong for every class: a false negative for its true class and a false positive for each other
    scored class. Each class's score is then the lowest that any outcome of those voxels could give it, so the mean
    is a lower bound on the smoothed segmenter's score under every perturbation of L2 norm below ``r`` (with the
    certificate's probability ``1 - alpha``); with one foreground class it is exactly the worst case.

    A class absent from a case's truth scores NaN and is left out of that case's mean (MONAI's
    ``DiceMetric(ignore_empty=True)`` and ``MeanIoU``); a case with no scored class present scores NaN.

    Args:
        labels: ``(B, 1, *spatial)`` class indices or :data:`~monai_advseg.certify.ABSTAIN`.
        radius: ``(B, 1, *spatial)`` certified radii (0 where abstaining).
        truth: ``(B, 1, *spatial)`` class indices or ``(B, num_classes, *spatial)`` one-hot.
        radii: the radii ``r >= 0`` to score at.
        num_classes: classes of the segmentation (2 for a binary, sigmoid model), >= 2.
        include_background: also score class 0.

    Returns:
        float64 CPU tensors: ``"dice"`` and ``"jaccard"`` ``(B, R)`` (mean over the scored classes),
        ``"certified_fraction"`` ``(B, R)`` (share of voxels certified at radius >= r) and ``"abstain_rate"``
        ``(B,)`` (share of voxels that abstained).

    Raises:
        ValueError: for mismatched shapes, ``num_classes < 2``, negative or non-finite radii, or classes out of range.
    """
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    if labels.ndim < 3 or labels.shape[1] != 1 or radius.shape != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and radius {tuple(radius.shape)} must both be (B, 1, *spatial)")
    radii = [float(r) for r in torch.as_tensor(radii, dtype=torch.float64).reshape(-1)]
    if not radii or not all(math.isfinite(r) and r >= 0 for r in radii):
        raise ValueError(f"radii must be one or more finite values >= 0, got {radii}")
    truth = _truth_indices(truth, labels, num_classes).reshape(labels.shape[0], -1)
    labels = labels.reshape(labels.shape[0], -1).long()
    radius = radius.reshape(labels.shape)
    if labels.numel() and (int(labels.min()) < ABSTAIN or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be ABSTAIN ({ABSTAIN}) or classes in [0, {num_classes - 1}]")
    cases, voxels = labels.shape
    scored = list(range(0 if include_background else 1, num_classes))
    # confusion[b, t, p] for truth t and prediction p, where p = num_classes stands for "not certified at r"
    uncertified = num_classes
    case_offset = torch.arange(cases, device=labels.device)[:, None] * (num_classes * (num_classes + 1))
    dice = torch.empty(cases, len(radii), dtype=torch.float64)
    jaccard = torch.empty_like(dice)
    fraction = torch.empty_like(dice)
    for column, r in enumerate(radii):
        certified = (labels != ABSTAIN) & (radius >= r)
        predicted = torch.where(certified, labels, uncertified)
        index = case_offset + truth * (num_classes + 1) + predicted
        confusion = torch.bincount(index.reshape(-1), minlength=cases * num_classes * (num_classes + 1))
        confusion = confusion.reshape(cases, num_classes, num_classes + 1).cpu().double()
        fraction[:, column] = certified.sum(dim=1).cpu().double() / voxels
        uncertified_total = confusion[:, :, uncertified].sum(dim=1)
        class_dice, class_jaccard = [], []
        for k in scored:
            true_positive = confusion[:, k, k]
            present = confusion[:, k, :].sum(dim=1)
            false_negative = present - true_positive
            # certified as k elsewhere, plus every uncertified voxel of another true class
            false_positive = confusion[:, :, k].sum(dim=1) - true_positive
            false_positive = false_positive + uncertified_total - confusion[:, k, uncertified]
            empty = present == 0
            class_dice.append(
                torch.where(empty, math.nan, 2 * true_positive / (2 * true_positive + false_positive + false_negative))
            )
            class_jaccard.append(
                torch.where(empty, math.nan, true_positive / (true_positive + false_positive + false_negative))
            )
        dice[:, column] = torch.stack(class_dice, dim=1).nanmean(dim=1)
        jaccard[:, column] = torch.stack(class_jaccard, dim=1).nanmean(dim=1)
    abstain_rate = (labels == ABSTAIN).sum(dim=1).cpu().double() / voxels
    return {"dice": dice, "jaccard": jaccard, "certified_fraction": fraction, "abstain_rate": abstain_rate}
