"""The default attack loss: per-voxel cross-entropy, summed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["summed_cross_entropy", "upcast_half"]


def upcast_half(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (from autocast) in float32, so the summed loss neither overflows nor underflows."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def summed_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-voxel cross-entropy summed over batch and voxels.

    The sum, not the mean: the sign of the gradient is invariant to positive scaling, and a mean over a large volume
    under fp16 autocast underflows and flips or zeroes many gradient signs. Summing also makes every sample's input
    gradient independent of its batch-mates, which the batched robustness sweep relies on.

    Args:
        logits: network output ``(B, C, *spatial)``. With ``C == 1`` it is read as a sigmoid (binary) output.
        label: class indices ``(B, 1, *spatial)`` or one-hot / soft targets ``(B, C, *spatial)`` (C > 1).

    Returns:
        A scalar tensor.

    Raises:
        ValueError: when the label's channel count fits neither format.
    """
    channels = logits.shape[1]
    logits = upcast_half(logits)
    if channels == 1:
        if label.shape[1] != 1:
            raise ValueError(f"a 1-channel (sigmoid) output needs a 1-channel label, got shape {tuple(label.shape)}")
        return F.binary_cross_entropy_with_logits(logits, label.to(logits.dtype), reduction="sum")
    if label.shape[1] == 1:
        return F.cross_entropy(logits, label[:, 0].long(), reduction="sum")
    if label.shape[1] == channels:
        return F.cross_entropy(logits, label.to(logits.dtype), reduction="sum")
    raise ValueError(
        f"label has {label.shape[1]} channels but the network returns {channels}: "
        f"expected class indices (1 channel) or one-hot ({channels} channels)"
    )
