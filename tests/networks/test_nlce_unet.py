from __future__ import annotations

import torch
from monai.networks.nets import UNet

from monai_advseg.networks.blocks import NLCE
from monai_advseg.networks.nets import NLCEUNet

ARGS = {"in_channels": 1, "out_channels": 3, "channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1}


def test_is_monai_unet_plus_one_nlce_at_the_bottom():
    net = NLCEUNet(spatial_dims=2, **ARGS)
    ref = UNet(spatial_dims=2, **ARGS)
    nlces = [m for m in net.modules() if isinstance(m, NLCE)]
    assert len(nlces) == 1
    n_nlce = sum(p.numel() for p in nlces[0].parameters())
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters()) + n_nlce
    # The NLCE runs at the coarsest resolution, on the bottom layer's channels.
    seen = []
    nlces[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 3, 32, 32)
    assert seen == [(2, 32, 8, 8)]


def test_unet_weights_load_and_3d():
    net = NLCEUNet(spatial_dims=3, norm="batch", gate="encnet", **ARGS)
    ref = UNet(spatial_dims=3, norm="batch", **ARGS)
    missing, unexpected = net.load_state_dict(
        {
            k.replace("model.1.submodule.1.submodule.", "model.1.submodule.1.submodule.0."): v
            for k, v in ref.state_dict().items()
        },
        strict=False,
    )
    assert not unexpected and all(".submodule.1.submodule.1." in k for k in missing)
    assert net.eval()(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
