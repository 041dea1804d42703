"""Embedded-Gaussian non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

__all__ = ["NonLocalBlock"]


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block for 1D, 2D or 3D feature maps.

    ``y_i = sum_j softmax_j(theta_i . phi_j) g_j`` and ``z_i = W_z y_i + x_i``, with ``theta``, ``phi`` and ``g``
    1x1 convolutions to ``inter_channels`` channels. The attention runs through
    :func:`torch.nn.functional.scaled_dot_product_attention` with ``scale=1.0`` (the embedded Gaussian has no
    ``1/sqrt(d)`` factor), which keeps the memory linear in the number of positions ``N``: the ``N x N`` affinity
    matrix is never stored.

    ``W_z`` is followed by a normalisation whose affine weight starts at zero (or, without normalisation, ``W_z``
    itself starts at zero), so the block is the identity at initialisation and can be inserted into any network
    without changing its output.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: number of input (and output) channels ``C``.
        inter_channels: bottleneck width of ``theta``/``phi``/``g``; defaults to ``max(C // 2, 1)``.
        sub_sample: max-pool ``phi`` and ``g`` by 2 along every spatial axis (the keys/values), dividing the
            attention cost by ``2 ** spatial_dims``.
        norm: normalisation after ``W_z``: ``"batch"``, ``"instance"`` or ``None``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        inter_channels: int | None = None,
        sub_sample: bool = True,
        norm: str | None = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.inter_channels = inter_channels if inter_channels is not None else max(in_channels // 2, 1)
        self.sub_sample = sub_sample
        conv_type = Conv[Conv.CONV, spatial_dims]
        ci = self.inter_channels
        self.theta = conv_type(in_channels, ci, kernel_size=1)
        self.phi = conv_type(in_channels, ci, kernel_size=1)
        self.g = conv_type(in_channels, ci, kernel_size=1)
        # ceil_mode keeps every position (odd sizes) and lets 1-voxel maps through (the 3D C5 of small inputs).
        self.pool: nn.Module = (
            Pool[Pool.MAX, spatial_dims](kernel_size=2, ceil_mode=True) if sub_sample else nn.Identity()
        )
        w_z = conv_type(ci, in_channels, kernel_size=1)
        if norm is None:
            nn.init.zeros_(w_z.weight)
            nn.init.zeros_(w_z.bias)
            self.w_z: nn.Module = w_z
        else:
            norm_layer = Norm[norm, spatial_dims](in_channels, affine=True)
            # Zero only the norm's affine part: zeroing both W_z and the norm weight would make each one's gradient
            # the product with the other's zero, and the branch would never start learning.
            nn.init.zeros_(norm_layer.weight)
            nn.init.zeros_(norm_layer.bias)
            self.w_z = nn.Sequential(w_z, norm_layer)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``y`` (before ``W_z``), shape ``(B, inter_channels, *spatial)``.

        Args:
            x: input of shape ``(B, C, *spatial)``.
        """
        b = x.shape[0]
        ci = self.inter_channels
        # (B, 1, N, Ci): one attention head. The CPU flash kernel needs 4D inputs with a unit stride on the last
        # axis; a transposed view of the conv output would silently select the O(N^2) math kernel instead.
        q = self.theta(x).reshape(b, ci, -1).transpose(1, 2).unsqueeze(1).contiguous()
        k = self.pool(self.phi(x)).reshape(b, ci, -1).transpose(1, 2).unsqueeze(1).contiguous()
        v = self.pool(self.g(x)).reshape(b, ci, -1).transpose(1, 2).unsqueeze(1).contiguous()
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return y.squeeze(1).transpose(1, 2).reshape([b, ci] + list(x.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input of shape ``(B, C, *spatial)``; odd sizes are sub-sampled with ``ceil_mode`` (no position dropped).

        Returns:
            ``z = W_z y + x``, same shape as ``x``.
        """
        return self.w_z(self.attention(x)) + x
