"""Input checks shared by every attack, so each failure has one clear message."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["check_attack_inputs", "check_clip_range", "as_sample_tensor"]


def check_clip_range(clip_range: Sequence[float] | None) -> tuple[float, float] | None:
    """Validate ``clip_range`` and return it as a float pair (or None).

    Raises:
        ValueError: when it is not a pair of finite numbers with lo < hi.
    """
    if clip_range is None:
        return None
    if isinstance(clip_range, (str, bytes)) or np.ndim(clip_range) != 1 or len(clip_range) != 2:
        raise ValueError(f"clip_range must be (lo, hi), got {clip_range!r}")
    try:
        lo, hi = (float(v) for v in clip_range)
    except (TypeError, ValueError):
        raise ValueError(f"clip_range must be two numbers (lo, hi), got {clip_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(f"clip_range must be finite with lo < hi, got {clip_range!r}")
    return lo, hi


def as_sample_tensor(value: float | torch.Tensor, name: str, image: torch.Tensor) -> torch.Tensor:
    """Turn a scalar or per-sample ``(B,)`` strength into a tensor broadcastable against ``image``.

    Args:
        value: a number or a tensor of shape ``()`` or ``(B,)``, in the image's units.
        name: the argument's name, for error messages.
        image: the ``(B, C, *spatial)`` batch the value applies to.

    Returns:
        A tensor of shape ``(B, 1, ..., 1)`` (or ``()`` for a scalar) in the image's dtype and device.

    Raises:
        ValueError: when the value is negative, not finite or has the wrong shape.
    """
    tensor = torch.as_tensor(value, dtype=torch.float64).detach()
    if tensor.ndim > 1 or (tensor.ndim == 1 and tensor.shape[0] != image.shape[0]):
        raise ValueError(f"{name} must be a scalar or a ({image.shape[0]},) tensor, got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if bool((tensor < 0).any()):
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    tensor = tensor.to(device=image.device, dtype=image.dtype)
    if tensor.ndim == 1:
        tensor = tensor.reshape(-1, *([1] * (image.ndim - 1)))
    return tensor


def check_attack_inputs(image: torch.Tensor, label: torch.Tensor) -> None:
    """Check an image batch and its label before an attack.

    Raises:
        ValueError: when the image is not ``(B, C, *spatial)`` with finite values, or the label does not match it
            or holds NaN or Inf.
    """
    if image.ndim < 3:
        raise ValueError(f"image must be (B, C, *spatial), got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating-point tensor, got {image.dtype}")
    if label.ndim != image.ndim or label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"label shape {tuple(label.shape)} does not match image shape {tuple(image.shape)}: "
            "batch and spatial sizes must be equal"
        )
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image contains NaN or Inf values; an attack on non-finite intensities is undefined")
    if label.is_floating_point() and not bool(torch.isfinite(label).all()):
        raise ValueError("label contains NaN or Inf values; it must hold class indices or a one-hot map")


def check_max_batch(max_batch: int | None) -> int | None:
    """``max_batch`` (samples per forward) as given, or a ValueError naming it: None or an int >= 1."""
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"max_batch must be None or an int >= 1, got {max_batch!r}")
    return max_batch
