"""MONAI UNet with one Non-Local Context Encoder at the bottom (the NLCE paper's generalisation experiment)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.layers.factories import Act, Norm
from monai.networks.nets import UNet
from torch import nn

from monai_advseg.networks.blocks.nlce import NLCE

__all__ = ["NLCEUNet"]


class NLCEUNet(UNet):
    """:class:`monai.networks.nets.UNet` with an :class:`~monai_advseg.networks.blocks.NLCE` after the bottom layer.

    The NLCE sits between the last down-sampling stage and the first up-sampling stage, at the coarsest resolution,
    where the non-local attention is cheapest. Everything else (and the state-dict keys of the UNet part, apart from
    the bottom layer's, which gain a ``.0`` prefix) is MONAI's UNet.

    Args:
        spatial_dims, in_channels, out_channels, channels, strides, kernel_size, up_kernel_size, num_res_units, act,
        norm, dropout, bias, adn_ordering: as for :class:`monai.networks.nets.UNet`.
        num_codes: codewords ``K`` of the context encoding.
        gate: NLCE gate, ``"paper"`` or ``"encnet"``.
        sub_sample: max-pool the non-local keys/values by 2 per axis.
        nlce_norm: normalisation after the non-local ``W_z`` (``"batch"``, ``"instance"`` or ``None``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        kernel_size: Sequence[int] | int = 3,
        up_kernel_size: Sequence[int] | int = 3,
        num_res_units: int = 0,
        act: tuple | str = Act.PRELU,
        norm: tuple | str = Norm.INSTANCE,
        dropout: float = 0.0,
        bias: bool = True,
        adn_ordering: str = "NDA",
        num_codes: int = 32,
        gate: str = "paper",
        sub_sample: bool = True,
        nlce_norm: str | None = "batch",
    ) -> None:
        # UNet.__init__ builds the bottom layer, so the NLCE settings must exist before it runs.
        self._nlce_args = {"num_codes": num_codes, "gate": gate, "sub_sample": sub_sample, "norm": nlce_norm}
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            strides=strides,
            kernel_size=kernel_size,
            up_kernel_size=up_kernel_size,
            num_res_units=num_res_units,
            act=act,
            norm=norm,
            dropout=dropout,
            bias=bias,
            adn_ordering=adn_ordering,
        )

    def _get_bottom_layer(self, in_channels: int, out_channels: int) -> nn.Module:
        """Return MONAI's bottom layer followed by an NLCE on its ``out_channels``.

        Args:
            in_channels: number of input channels.
            out_channels: number of output channels.
        """
        bottom = super()._get_bottom_layer(in_channels, out_channels)
        return nn.Sequential(bottom, NLCE(self.dimensions, out_channels, **self._nlce_args))
