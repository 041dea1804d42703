"""Per-case Dice from class indices, for the attacks' per-step picks (equal to MONAI's ``DiceMetric``, much cheaper).

The worst case scores every iterate of every member by Dice (it keeps each member's best iterate and the lowest
over the members). MONAI's ``DiceMetric`` needs one-hot tensors and loops over cases and classes in Python; here the
same numbers come from one ``bincount`` of ``truth * C + prediction`` per batch. The reported numbers stay MONAI's
(:meth:`~monai_advseg.engines.RobustnessEvaluator.scores`); this module only serves the picks, and its tests pin it to
``DiceMetric`` on random and edge cases.
"""

from __future__ import annotations

import torch

__all__ = ["argmax_classes", "case_dice", "case_scores", "label_map", "predicted_classes", "predicted_label_map"]


def argmax_classes(logits: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """``torch.argmax(logits, dim=1)``, computed as ``logits.max(dim=1).indices``.

    The same indices (the first maximum; NaN counts as the maximum), but on the CPU ``argmax`` over the channel
    dimension of a few-channel batch is 10-20x slower than ``max`` (e.g. 32 ms against 1.9 ms at 36 x 2 x 96 x 96),
    and the attacks take it at every step.

    Args:
        logits: ``(B, C, *spatial)``.
        keepdim: keep the channel dimension (size 1).

    Returns:
        ``(B, *spatial)`` (or ``(B, 1, *spatial)``) int64 class indices.
    """
    return logits.max(dim=1, keepdim=keepdim).indices


def predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    """The prediction the reports score: the argmax of several channels, ``sigmoid >= 0.5`` of one.

    Args:
        logits: ``(B, C, *spatial)``.

    Returns:
        ``(B, *spatial)`` int64 class indices.
    """
    if logits.shape[1] == 1:  # the sigmoid itself, not logits >= 0: sigmoid rounds to 0.5 just below 0
        return (torch.sigmoid(logits.float()) >= 0.5).long()[:, 0]
    return argmax_classes(logits)


def label_map(channels: torch.Tensor) -> torch.Tensor:
    """Binary label channels (multi-label, BraTS-style) as one label map to draw: 1 + the last channel that is on.

    A voxel can carry several labels (nested regions) or none; the map shows the last one that is on (0: none), so
    nested regions listed from the outermost in draw as rings and each channel keeps its own value.

    Args:
        channels: ``(B, C, *spatial)``, nonzero where a label is on.

    Returns:
        ``(B, *spatial)`` int64 in ``0 .. C``.
    """
    values = torch.arange(1, channels.shape[1] + 1, device=channels.device)
    return (channels.bool().long() * values.view(1, -1, *([1] * (channels.ndim - 2)))).amax(dim=1)


def predicted_label_map(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """What a gallery draws of a prediction: :func:`predicted_classes`, or with ``multi_label`` the :func:`label_map`
    of the channels the scorer counts as on (``sigmoid >= 0.5`` each, as
    :class:`~monai_advseg.engines.MultiLabelScorer`).

    Args:
        logits: ``(B, C, *spatial)``.
        multi_label: the channels are independent sigmoid labels.

    Returns:
        ``(B, *spatial)`` int64.
    """
    if not multi_label:
        return predicted_classes(logits)
    return label_map(torch.sigmoid(logits.float()) >= 0.5)


def _class_counts(
    prediction: torch.Tensor, label: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per case and class: (voxels of the class in both, in the truth, in the prediction), each ``(B, C)``."""
    batch, classes = prediction.shape[0], num_classes
    predicted = prediction.reshape(batch, -1)
    offsets = torch.arange(batch, device=predicted.device)[:, None] * classes
    predicted_count = torch.bincount((predicted + offsets).flatten(), minlength=batch * classes).reshape(batch, -1)
    if label.shape[1] == 1:
        truth = label.reshape(batch, -1).long()
        if truth.numel() and (int(truth.min()) < 0 or int(truth.max()) >= classes):
            raise ValueError(
                f"label holds class indices {int(truth.min())}..{int(truth.max())}; expected 0..{classes - 1}"
            )
        codes = (truth * classes + predicted + offsets * classes).flatten()
        confusion = torch.bincount(codes, minlength=batch * classes * classes).reshape(batch, classes, classes)
        return confusion.diagonal(dim1=1, dim2=2), confusion.sum(dim=2), predicted_count
    # one-hot (or soft) truth: sum its value at each voxel's predicted class, per class
    truth = label.reshape(batch, classes, -1).double()
    hit = truth.gather(1, predicted[:, None]).flatten()
    both = torch.bincount((predicted + offsets).flatten(), weights=hit, minlength=batch * classes).reshape(batch, -1)
    return both, truth.sum(dim=2), predicted_count


def case_dice(
    prediction: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    *,
    include_background: bool = False,
    ignore_empty: bool = True,
) -> torch.Tensor:
    """Each case's Dice, the mean over its scored classes: MONAI ``DiceMetric(reduction="none")`` + ``nanmean``.

    Per class, ``2 |T & P| / (|T| + |P|)`` in float32 as MONAI computes it; a class absent from the truth is NaN with
    ``ignore_empty`` (and left out of the mean), else 1 when the prediction has none of it either and 0 otherwise.
    A case without any scored class is NaN. Equal to MONAI's values bit for bit while a case's counts stay below
    2**24 voxels (float32 holds them exactly) and the truth is 0/1.

    Args:
        prediction: ``(B, *spatial)`` class indices (e.g. :func:`predicted_classes`).
        label: the truth, class indices ``(B, 1, *spatial)`` or one-hot ``(B, num_classes, *spatial)``.
        num_classes: classes including the background (2 for a 1-channel sigmoid network).
        include_background: score class 0 too.
        ignore_empty: as in MONAI's ``DiceMetric``.

    Returns:
        ``(B,)`` float32 Dice on the prediction's device.

    Raises:
        ValueError: when the label's channels fit neither format, or its indices fall outside ``0..num_classes-1``.
    """
    if label.shape[1] not in (1, num_classes) or label.shape[0] != prediction.shape[0]:
        raise ValueError(
            f"label of shape {tuple(label.shape)} does not fit a prediction of {tuple(prediction.shape)} with "
            f"{num_classes} classes (expected 1 channel of class indices or {num_classes} one-hot channels)"
        )
    both, truth, predicted = _class_counts(prediction, label.to(prediction.device), num_classes)
    first = 0 if include_background else 1
    both, truth, predicted = both[:, first:], truth[:, first:], predicted[:, first:]
    dice = (2 * both).float() / (truth + predicted).float()
    if ignore_empty:
        empty = torch.full_like(dice, float("nan"))
    else:
        empty = (predicted == 0).float()
    return torch.nanmean(torch.where(truth > 0, dice, empty), dim=1)


def case_scores(
    logits: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    *,
    include_background: bool = False,
    ignore_empty: bool = True,
) -> dict[str, torch.Tensor]:
    """The worst case's scorer: ``{"dice", "foreground"}`` per case from logits (see :func:`case_dice`).

    Args:
        logits: ``(B, C, *spatial)``.
        label, num_classes, include_background, ignore_empty: as in :func:`case_dice`.

    Returns:
        ``dice`` ``(B,)`` and ``foreground``, the share of voxels predicted as a class other than 0, on the CPU.
    """
    prediction = predicted_classes(logits.detach())
    dice = case_dice(prediction, label, num_classes, include_background=include_background, ignore_empty=ignore_empty)
    foreground = 1 - (prediction == 0).flatten(1).float().mean(dim=1)
    return {"dice": dice.cpu(), "foreground": foreground.cpu()}
