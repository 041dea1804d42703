"""Attack losses: the default per-voxel cross-entropy summed, and the segmentation losses of SEA plus Dice."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from monai_advseg.attacks.scoring import argmax_classes

__all__ = [
    "dice_loss",
    "jensen_shannon_loss",
    "masked_cross_entropy",
    "masked_spherical_loss",
    "per_channel_binary_cross_entropy",
    "per_sample_cross_entropy",
    "per_sample_loss",
    "summed_cross_entropy",
    "upcast_half",
]


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


# ----------------------------------------------------------------------------------------------- segmentation losses
# SEA's set (Croce et al., ECCV 2024) plus Dice: each returns one value per sample, summed over its voxels, so a batch's
# sum has every sample's gradient independent of its batch-mates and APGD can compare losses per sample.


def _two_class(logits: torch.Tensor) -> torch.Tensor:
    """A 1-channel sigmoid output as the equivalent 2-class logits ``(0, z)`` (softmax of them is the sigmoid)."""
    logits = upcast_half(logits)
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits


def _indices(label: torch.Tensor, channels: int) -> torch.Tensor:
    if label.shape[1] == 1:
        return label[:, 0].long()
    if label.shape[1] == channels:
        return argmax_classes(label)
    raise ValueError(f"label has {label.shape[1]} channels; expected 1 (class indices) or {channels} (one-hot)")


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).sum(dim=1)


def per_sample_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over each sample's voxels, ``(B,)`` (a 1-channel output is read as a sigmoid)."""
    logits = _two_class(logits)
    return _per_sample(F.cross_entropy(logits, _indices(label, logits.shape[1]), reduction="none"))


def per_channel_binary_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of every channel on its own (multi-label sigmoid outputs), summed per sample, ``(B,)``.

    ``sum_c sum_v BCE(sigmoid(z_cv), y_cv)``: each channel is an independent label (BraTS-style overlapping regions),
    so a channel's gradient does not depend on the others, unlike a softmax over the channels.

    Args:
        logits: ``(B, C, *spatial)``, one sigmoid label per channel.
        label: binary (or soft) targets ``(B, C, *spatial)`` in [0, 1], one channel per label.

    Returns:
        ``(B,)``.

    Raises:
        ValueError: when the label's shape differs from the logits'.
    """
    if label.shape != logits.shape:
        raise ValueError(
            f"a multi-label (per-channel sigmoid) loss needs one label channel per output channel: label shape "
            f"{tuple(label.shape)}, logits shape {tuple(logits.shape)}"
        )
    logits = upcast_half(logits)
    return _per_sample(F.binary_cross_entropy_with_logits(logits, label.to(logits.dtype), reduction="none"))


def per_sample_loss(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """Any ``loss(logits, label)`` (e.g. a bundle's MONAI ``DiceCELoss``) applied to each sample on its own, ``(B,)``.

    A loss that reduces over the batch (``DiceCELoss(batch=True)``, any mean) would make one sample's input gradient
    depend on its batch-mates, and the sweep stacks every strength of an image into one batch; one call per sample
    keeps them apart.

    Args:
        loss: a loss returning a scalar (or anything whose sum is the sample's loss) for one sample.

    Returns:
        ``fn(logits, label) -> (B,)``.
    """

    def each_sample(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return torch.stack([loss(logits[i : i + 1], label[i : i + 1]).sum() for i in range(logits.shape[0])])

    each_sample.__name__ = f"per_sample({getattr(loss, '__name__', type(loss).__name__)})"
    return each_sample


def masked_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the voxels the network still gets right, summed per sample, ``(B,)``.

    Voxels already misclassified no longer count, so the attack spends its budget on the rest (SEA's masked CE).
    """
    logits = _two_class(logits)
    indices = _indices(label, logits.shape[1])
    correct = (argmax_classes(logits) == indices).to(logits.dtype)
    return _per_sample(correct * F.cross_entropy(logits, indices, reduction="none"))


def jensen_shannon_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between the softmax and the one-hot label, summed per sample, ``(B,)``.

    ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``; bounded by log 2 per voxel, so voxels
    already far from their label stop dominating the gradient.
    """
    logits = _two_class(logits)
    indices = _indices(label, logits.shape[1])
    p = torch.softmax(logits, dim=1)
    q = F.one_hot(indices, logits.shape[1]).movedim(-1, 1).to(p.dtype)
    m = (p + q) / 2
    kl_p = (p * (torch.log(p.clamp_min(1e-12)) - torch.log(m.clamp_min(1e-12)))).sum(dim=1)
    kl_q = (q * (torch.log(q.clamp_min(1e-12)) - torch.log(m.clamp_min(1e-12)))).sum(dim=1)
    return _per_sample((kl_p + kl_q) / 2)


def masked_spherical_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Minus the true class's logit after normalising each voxel's logit vector, over the still-correct voxels.

    ``-z_y / ||z||_2`` summed per sample, ``(B,)`` (SEA's masked normalised-logit loss): scale-free, so a network whose
    logits are large and saturate the softmax still has a useful gradient.
    """
    logits = _two_class(logits)
    indices = _indices(label, logits.shape[1])
    correct = (argmax_classes(logits) == indices).to(logits.dtype)
    normalised = logits / logits.norm(dim=1, keepdim=True).clamp_min(1e-12)
    true_logit = normalised.gather(1, indices[:, None])[:, 0]
    return _per_sample(-correct * true_logit)


def dice_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """MONAI's soft Dice loss (softmax, foreground classes) per sample, ``(B,)``: the score our reports use."""
    from monai.losses import DiceLoss

    logits = _two_class(logits)
    indices = _indices(label, logits.shape[1])[:, None]
    loss = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, reduction="none")(logits, indices)
    return loss.flatten(1).mean(dim=1)
