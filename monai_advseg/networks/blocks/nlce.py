"""Non-Local Context Encoder (He et al., AAAI 2019): non-local block, context encoding, channel gate."""

from __future__ import annotations

import torch
from torch import nn

from monai_advseg.networks.blocks.context_encoding import ContextEncoding
from monai_advseg.networks.blocks.nonlocal_block import NonLocalBlock

__all__ = ["NLCE"]


class NLCE(nn.Module):
    """Non-Local Context Encoder: ``F_z = NonLocal(x)``, ``gamma = ContextEncoding(F_z)``, output ``F_z * gamma``.

    ``gate="paper"`` returns ``F_z * gamma`` as the NLCE paper writes it: every channel is scaled by a factor in
    ``(0, 1)``, so the module can only attenuate channels (at initialisation by about 1/2: the gates start near 1/2,
    see :class:`~monai_advseg.networks.blocks.ContextEncoding`).
    ``gate="encnet"`` returns EncNet's ``relu(F_z + F_z * gamma)``: the residual keeps ``F_z`` intact, the gate
    amplifies channels by up to 2x, and the ReLU clips negative responses.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: number of input (and output) channels.
        inter_channels: non-local bottleneck width; defaults to ``in_channels // 2``.
        sub_sample: max-pool keys and values of the non-local block by 2 per axis.
        encoding_channels: ``C'`` of the context encoding; defaults to ``in_channels``.
        num_codes: number of codewords ``K``.
        gate: ``"paper"`` or ``"encnet"`` (see above).
        norm: normalisation after the non-local ``W_z`` (``"batch"``, ``"instance"`` or ``None``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        inter_channels: int | None = None,
        sub_sample: bool = True,
        encoding_channels: int | None = None,
        num_codes: int = 32,
        gate: str = "paper",
        norm: str | None = "batch",
    ) -> None:
        super().__init__()
        if gate not in ("paper", "encnet"):
            raise ValueError(f"gate must be 'paper' or 'encnet', got {gate!r}.")
        self.gate = gate
        self.spatial_dims = spatial_dims
        self.nonlocal_block = NonLocalBlock(spatial_dims, in_channels, inter_channels, sub_sample, norm)
        self.encoding = ContextEncoding(spatial_dims, in_channels, encoding_channels, num_codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: feature map ``(B, C, *spatial)``.

        Returns:
            gated feature map, same shape as ``x``.
        """
        f_z = self.nonlocal_block(x)
        gamma = self.encoding(f_z)
        gamma = gamma.reshape(list(gamma.shape) + [1] * self.spatial_dims)
        if self.gate == "encnet":
            return torch.relu(f_z + f_z * gamma)
        return f_z * gamma
