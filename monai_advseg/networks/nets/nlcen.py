"""NLCEN (He et al., "Non-Local Context Encoder", AAAI 2019): ResNet + NLCE + FPN, deep supervision, refinement."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import ResNetFeatures
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck, resnet_params
from torch import nn

from monai_advseg.networks.blocks.nlce import NLCE

__all__ = ["NLCEN"]


class _ZeroPadShortcut(nn.Module):
    """ResNet type-A shortcut: stride-``s`` sub-sampling, then zero channels up to ``out_channels``.

    MONAI builds this shortcut (resnet18/34) as a ``functools.partial`` around a method, which TorchScript cannot
    compile, and concatenates ``out.data``, which cuts the gradient through the shortcut. The forward values are the
    same here, and the gradient flows: attacks need the true input gradient.
    """

    def __init__(self, spatial_dims: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims == 3:
            x = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        elif self.spatial_dims == 2:
            x = x[:, :, :: self.stride, :: self.stride]
        else:
            x = x[:, :, :: self.stride]
        pad = x.new_zeros([x.shape[0], self.out_channels - x.shape[1]] + list(x.shape[2:]))
        return torch.cat([x, pad], dim=1)


def _interp_mode(spatial_dims: int) -> str:
    return {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]


class NLCEN(nn.Module):
    """Non-Local Context Encoding Network: global phase with deep supervision, then a refinement phase.

    Global phase: a MONAI :class:`~monai.networks.nets.ResNetFeatures` backbone (never pretrained: nothing is
    downloaded) gives C2..C5 at strides 4, 8, 16, 32; one :class:`~monai_advseg.networks.blocks.NLCE` per level gives
    E2..E5; the paper's top-down path ``P5 = conv1x1(E5)``, ``P_i = E_i + up(conv1x1(P_{i+1}))`` gives P2..P5 (``P_i``
    keeps the channel count of ``E_i`` because the paper adds ``E_i`` without a lateral convolution; MONAI's
    ``FeaturePyramidNetwork`` computes ``lateral(E_i) + up(P_{i+1})`` followed by a 3x3 convolution, a different
    formula, so the path is wired here). Each ``P_i`` gives coarse logits through a 3x3 convolution, resized
    (bi/trilinear) to the input size.

    Refinement phase: P2, P3, P4, P5 go through 0, 1, 2, 3 bottleneck blocks, are resized to the size of P2,
    concatenated, fused by a 1x1 convolution (batch norm, ReLU) and a 3x3 convolution to the logits, which are resized
    to the input size.

    In training mode ``forward`` returns ``[refined, g2, g3, g4, g5]`` (all at input size); in eval mode only the
    refined logits. The paper's loss ``1/4 sum_i L_g^i + 0.25 L_r`` is
    ``monai.losses.DeepSupervisionLoss(loss, weights=[0.25, 0.25, 0.25, 0.25, 0.25])`` (the first weight is the
    refined output's; give all five weights, a shorter list is silently replaced by ``weight_mode``).

    Inputs whose spatial sizes are divisible by 32 give outputs of exactly the input size, and other sizes also do
    (every resize targets an explicit size), at the cost of misaligned coarse levels.

    Args:
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        out_channels: number of output channels (classes).
        backbone: a ``ResNetFeatures`` model name, e.g. ``"resnet18"``, ``"resnet34"``, ``"resnet50"``.
        num_codes: codewords ``K`` of each context encoding.
        gate: NLCE gate, ``"paper"`` (``F_z * gamma``) or ``"encnet"`` (``relu(F_z + F_z * gamma)``).
        sub_sample: max-pool the non-local keys/values by 2 per axis.
        refine_blocks: number of bottleneck blocks applied to P2..P5 in the refinement phase.
        shortcut_type: the backbone's shortcut where a block changes stride or width: ``"A"`` (stride-``s``
            sub-sampling and zero channels, parameter-free), ``"B"`` (a 1x1 convolution with stride ``s`` and batch
            norm, the projection of the original ResNet and of MONAI's ``ResNet(shortcut_type="B")``) or ``None``
            for MONAI's choice per model (``"A"`` for resnet18/34, ``"B"`` for resnet10 and resnet50 up). Type A is
            always this module's own, which passes the input gradient (MONAI's concatenates ``.data`` and cuts it).

    Raises:
        ValueError: on ``spatial_dims`` other than 2 or 3, an unknown backbone or shortcut type, or ``refine_blocks``
            without four counts.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        backbone: str = "resnet18",
        num_codes: int = 32,
        gate: str = "paper",
        sub_sample: bool = True,
        refine_blocks: tuple[int, int, int, int] = (0, 1, 2, 3),
        shortcut_type: str | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if backbone not in resnet_params:
            raise ValueError(f"backbone must be one of {sorted(resnet_params)}, got {backbone!r}.")
        if len(refine_blocks) != 4:
            raise ValueError("refine_blocks needs one count per level P2..P5.")
        if shortcut_type not in (None, "A", "B"):
            raise ValueError(f"shortcut_type must be 'A', 'B' or None (MONAI's default), got {shortcut_type!r}.")
        self.spatial_dims = spatial_dims
        self.mode = _interp_mode(spatial_dims)
        self.backbone = ResNetFeatures(backbone, pretrained=False, spatial_dims=spatial_dims, in_channels=in_channels)
        self._set_shortcuts(shortcut_type, bias=resnet_params[backbone][3])
        expansion = ResNetBottleneck.expansion if resnet_params[backbone][0] == "bottleneck" else ResNetBlock.expansion
        chans = [c * expansion for c in (64, 128, 256, 512)]
        self.feature_channels = chans
        conv_type = Conv[Conv.CONV, spatial_dims]

        self.nlce = nn.ModuleList(
            NLCE(spatial_dims, c, sub_sample=sub_sample, num_codes=num_codes, gate=gate) for c in chans
        )
        self.top = conv_type(chans[3], chans[3], kernel_size=1)
        # top_down[j] maps P_{5-j} to the channels of E_{4-j}, i.e. it is applied from the top level down.
        self.top_down = nn.ModuleList(conv_type(chans[i + 1], chans[i], kernel_size=1) for i in (2, 1, 0))
        self.heads = nn.ModuleList(conv_type(c, out_channels, kernel_size=3, padding=1) for c in chans)
        self.refine = nn.ModuleList(
            nn.Sequential(*[ResNetBottleneck(c, c // 4, spatial_dims=spatial_dims) for _ in range(n)])
            for c, n in zip(chans, refine_blocks, strict=True)
        )
        self.fuse = Convolution(spatial_dims, sum(chans), chans[0], kernel_size=1, norm="batch", act="relu")
        self.refined_head = conv_type(chans[0], out_channels, kernel_size=3, padding=1)

    def _set_shortcuts(self, shortcut_type: str | None, bias: bool) -> None:
        """Make every downsampling shortcut of the backbone of type ``shortcut_type`` (None: keep MONAI's type).

        MONAI builds type A as a ``functools.partial`` (not a module), type B as ``Sequential(conv, norm)``. Type A
        becomes :class:`_ZeroPadShortcut`; a new type-B projection gets the initialisation of MONAI's ResNet (Kaiming
        normal, fan-out, for the convolution weight, PyTorch's default for its bias; unit weight and zero bias for the
        norm) and a convolution bias when MONAI's table gives one for the model.
        """
        conv_type = Conv[Conv.CONV, self.spatial_dims]
        for layer in (self.backbone.layer1, self.backbone.layer2, self.backbone.layer3, self.backbone.layer4):
            for block in layer:
                ds = block.downsample
                if ds is None:
                    continue
                is_partial = not isinstance(ds, nn.Module)
                stride = ds.keywords["stride"] if is_partial else ds[0].stride[0]
                out_channels = ds.keywords["planes"] if is_partial else ds[0].out_channels
                if shortcut_type == "A" or (shortcut_type is None and is_partial):
                    block.downsample = _ZeroPadShortcut(self.spatial_dims, out_channels, stride)
                elif is_partial:
                    conv = conv_type(block.conv1.in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)
                    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                    norm = get_norm_layer(name="batch", spatial_dims=self.spatial_dims, channels=out_channels)
                    block.downsample = nn.Sequential(conv, norm)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[P2, P3, P4, P5]``.

        Args:
            x: input image ``(B, in_channels, *spatial)``.
        """
        feats = self.backbone(x)[1:]
        # TorchScript iterates a ModuleList only through enumerate, hence the index loops.
        e: list[torch.Tensor] = []
        for i, nlce in enumerate(self.nlce):
            e.append(nlce(feats[i]))
        p = self.top(e[3])
        out = [p]
        for j, conv in enumerate(self.top_down):
            lateral = e[2 - j]
            p = lateral + F.interpolate(conv(p), size=lateral.shape[2:], mode="nearest")
            out.insert(0, p)
        return out

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[refined, g2, g3, g4, g5]``, all resized to the input size.

        Args:
            x: input image ``(B, in_channels, *spatial)``.
        """
        size = x.shape[2:]
        pyr = self.pyramid(x)
        outputs: list[torch.Tensor] = []
        for i, head in enumerate(self.heads):
            outputs.append(F.interpolate(head(pyr[i]), size=size, mode=self.mode))
        common = pyr[0].shape[2:]
        refined: list[torch.Tensor] = []
        for i, blocks in enumerate(self.refine):
            refined.append(F.interpolate(blocks(pyr[i]), size=common, mode=self.mode))
        fused = self.refined_head(self.fuse(torch.cat(refined, dim=1)))
        outputs.insert(0, F.interpolate(fused, size=size, mode=self.mode))
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """
        Args:
            x: input image ``(B, in_channels, *spatial)``.

        Returns:
            training mode: ``[refined, g2, g3, g4, g5]``; eval mode: the refined logits ``(B, out_channels, *spatial)``.
        """
        outputs = self.forward_all(x)
        if self.training:
            return outputs
        return outputs[0]
