"""Per-case segmentation scores of a batch of logits, with MONAI's metrics: what a robustness sweep reports."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from monai.metrics import DiceMetric, MeanIoU
from monai.transforms import AsDiscrete

from monai_advseg.attacks.scoring import case_scores
from monai_advseg.engines.sweep_records import no_foreground

__all__ = ["MultiLabelScorer", "SegmentationScorer"]


class SegmentationScorer:
    """Per-case Dice, Jaccard and predicted-foreground share of a batch of logits.

    The prediction is the argmax (multi-channel) or ``sigmoid >= 0.5`` (one channel) in one-hot form, scored with
    MONAI ``DiceMetric`` and ``MeanIoU`` per case; a case's value is the mean over its scored classes. With
    ``ignore_empty=True`` (MONAI's default) a class absent from a case's ground truth is NaN and left out, and a case
    with no scored class is NaN (excluded from a report's means); ``foreground`` keeps such cases visible.

    Args:
        include_background: score class 0 too.
        ignore_empty: MONAI's ``ignore_empty`` of both metrics.
    """

    def __init__(self, include_background: bool = False, ignore_empty: bool = True) -> None:
        self.include_background = include_background
        self.ignore_empty = ignore_empty
        self._dice = DiceMetric(include_background=include_background, reduction="none", ignore_empty=ignore_empty)
        self._jaccard = MeanIoU(include_background=include_background, reduction="none", ignore_empty=ignore_empty)

    def __call__(self, logits: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
        """Score a batch.

        Args:
            logits: ``(B, C, *spatial)``.
            label: class indices ``(B, 1, *spatial)`` or one-hot ``(B, num_classes, *spatial)``.
            num_classes: classes including background (2 for a 1-channel sigmoid network).

        Returns:
            ``{"dice", "jaccard", "foreground"}``, each ``(B,)`` on the CPU; ``foreground`` is the share of voxels
            predicted as a class other than 0.

        Raises:
            ValueError: when the label has neither 1 nor ``num_classes`` channels.
        """
        if logits.shape[1] == 1:
            indices = AsDiscrete(threshold=0.5)(torch.sigmoid(logits.float()))
        else:
            indices = AsDiscrete(argmax=True, dim=1)(logits)
        # MONAI's transforms return MetaTensors; the metrics run on plain ones (the attacks call this every step, and
        # MetaTensor dispatch made the scoring a quarter of the worst case's time).
        prediction = AsDiscrete(to_onehot=num_classes, dim=1)(indices).as_subclass(torch.Tensor)
        if label.shape[1] not in (1, num_classes):
            raise ValueError(
                f"label has {label.shape[1]} channels; expected 1 (class indices) or {num_classes} (one-hot) for a "
                f"network with {num_classes} classes"
            )
        truth = label.float() if label.shape[1] == num_classes else AsDiscrete(to_onehot=num_classes, dim=1)(label)
        truth = truth.as_subclass(torch.Tensor).to(prediction.device)
        result = {}
        for name, metric in (("dice", self._dice), ("jaccard", self._jaccard)):
            values = metric(y_pred=prediction, y=truth)
            metric.reset()
            # Plain tensors: a MetaTensor score leaked into the attacks' picks (torch.where) and so into their
            # iterates, and every layer then dispatched through MetaTensor (the worst case ran 2.4x its passes).
            result[name] = torch.nanmean(values.float(), dim=1).as_subclass(torch.Tensor).cpu()
        result["foreground"] = (1 - prediction[:, 0].flatten(1).float().mean(dim=1)).cpu()
        return result

    @staticmethod
    def no_foreground(label: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``(B,)`` booleans (CPU): the case's truth has no voxel of a class other than 0."""
        return no_foreground(label, num_classes)

    def per_step(self, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
        """The same per-case Dice for the attacks' per-step picks, from one ``bincount``
        (:func:`~monai_advseg.attacks.scoring.case_scores`, equal to ``DiceMetric``; tests pin it): the worst case
        scores every iterate, and the one-hot round trip through MONAI's metrics was a sixth of its time.

        Args:
            num_classes: classes including background.

        Returns:
            ``scorer(logits, label) -> {"dice", ...}`` per case.
        """
        return partial(
            case_scores,
            num_classes=num_classes,
            include_background=self.include_background,
            ignore_empty=self.ignore_empty,
        )


class MultiLabelScorer:
    """Per-case Dice, Jaccard and predicted-foreground share of independent sigmoid labels (multi-label, BraTS-style).

    Each channel is its own label, predicted as ``sigmoid >= 0.5`` and scored with MONAI ``DiceMetric`` and
    ``MeanIoU`` (every channel, there is no background channel); a case's value is the mean over its scored channels.
    With one channel this is :class:`SegmentationScorer`'s binary sigmoid case (the same scores).

    Args:
        ignore_empty: MONAI's ``ignore_empty`` of both metrics (a channel absent from a case's truth is NaN, left out).
    """

    def __init__(self, ignore_empty: bool = True) -> None:
        self.ignore_empty = ignore_empty
        self._dice = DiceMetric(include_background=True, reduction="none", ignore_empty=ignore_empty)
        self._jaccard = MeanIoU(include_background=True, reduction="none", ignore_empty=ignore_empty)

    def __call__(self, logits: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
        """Score a batch.

        Args:
            logits: ``(B, C, *spatial)``, one sigmoid label per channel.
            label: one binary channel per output channel, ``(B, C, *spatial)``.
            num_classes: unused (the channels are the labels); the scorer interface's argument.

        Returns:
            ``{"dice", "jaccard", "foreground"}``, each ``(B,)`` on the CPU; ``foreground`` is the share of voxels
            predicted as any label.

        Raises:
            ValueError: when the label has another channel count than the logits.
        """
        if label.shape[1] != logits.shape[1]:
            raise ValueError(
                f"multi_label: label has {label.shape[1]} channels; expected one binary channel per output channel "
                f"({logits.shape[1]})"
            )
        prediction = AsDiscrete(threshold=0.5)(torch.sigmoid(logits.float())).as_subclass(torch.Tensor)
        truth = label.float().as_subclass(torch.Tensor).to(prediction.device)
        result = {}
        for name, metric in (("dice", self._dice), ("jaccard", self._jaccard)):
            values = metric(y_pred=prediction, y=truth)
            metric.reset()
            result[name] = torch.nanmean(values.float(), dim=1).as_subclass(torch.Tensor).cpu()
        result["foreground"] = prediction.amax(dim=1).flatten(1).mean(dim=1).cpu()
        return result

    def per_step(self, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
        """The attacks' per-step picks: this scorer itself (``scorer(logits, label)``)."""
        return partial(self, num_classes=num_classes)

    @staticmethod
    def no_foreground(label: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``(B,)`` booleans (CPU): the case's truth has no voxel of any label (every channel counts)."""
        return no_foreground(label, num_classes, multi_label=True)
