"""Target masks for targeted attacks."""

from __future__ import annotations

import torch

__all__ = ["class_indices", "inverse_mask"]


def inverse_mask(label: torch.Tensor, num_classes: int, background_target: int = 1) -> torch.Tensor:
    """The NLCE paper's attack target: the inverse of the ground-truth mask.

    Foreground becomes background and background becomes foreground. For a binary task that is exactly ``1 - label``;
    with several foreground classes every foreground voxel is sent to background (0) and every background voxel to
    ``background_target``.

    Args:
        label: class indices ``(B, 1, *spatial)`` or one-hot ``(B, num_classes, *spatial)``.
        num_classes: number of classes including background (2 for a binary task, also for a 1-channel sigmoid net).
        background_target: the class background voxels are sent to (1..num_classes-1).

    Returns:
        The target in the same format (indices or one-hot) and dtype as ``label``.

    Raises:
        ValueError: on fewer than 2 classes, a bad ``background_target`` or a label with the wrong channel count.
    """
    if num_classes < 2:
        raise ValueError(f"inverse_mask: num_classes must be >= 2, got {num_classes}")
    if not 1 <= background_target < num_classes:
        raise ValueError(f"inverse_mask: background_target must be in 1..{num_classes - 1}, got {background_target}")
    if label.ndim < 3:
        raise ValueError(f"inverse_mask: label must be (B, 1 or C, *spatial), got shape {tuple(label.shape)}")
    channels = label.shape[1]
    if channels == 1:
        indices = label
    elif channels == num_classes:
        indices = label.argmax(dim=1, keepdim=True)
    else:
        raise ValueError(
            f"inverse_mask: label has {channels} channels; expected 1 (class indices) or {num_classes} (one-hot)"
        )
    target = torch.where(indices > 0, torch.zeros_like(indices), torch.full_like(indices, background_target))
    if channels == 1:
        return target
    one_hot = torch.zeros_like(label)
    return one_hot.scatter_(1, target.long(), 1)


def class_indices(label: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Class indices ``(B, 1, *spatial)`` of a label given as class indices (returned as is) or one-hot.

    Args:
        label: ``(B, 1, *spatial)`` class indices or ``(B, C, *spatial)`` one-hot.
        num_classes: when given, a one-hot label must have exactly this many channels.

    Raises:
        ValueError: naming the channel count when it is neither 1 nor ``num_classes``.
    """
    channels = label.shape[1]
    if channels == 1:
        return label
    if num_classes is not None and channels != num_classes:
        raise ValueError(
            f"label has {channels} channels; expected 1 (class indices) or {num_classes} (one-hot) for a "
            f"network with {num_classes} classes"
        )
    return label.argmax(dim=1, keepdim=True)
