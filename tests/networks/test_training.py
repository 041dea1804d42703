"""A few optimisation steps on real chest X-ray crops must reduce the paper's deep-supervision loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from PIL import Image

from monai_advseg.networks.nets import NLCEN, NLCEUNet

SIZE = 64


def _load(path, n=8):
    names = sorted(p.name for p in (path / "images").glob("*.png"))[:n]
    images, masks = [], []
    for name in names:
        img = Image.open(path / "images" / name).convert("L").resize((SIZE, SIZE), Image.BILINEAR)
        msk = Image.open(path / "masks" / name).convert("L").resize((SIZE, SIZE), Image.NEAREST)
        images.append(np.asarray(img, dtype=np.float32) / 255.0)
        masks.append((np.asarray(msk) > 127).astype(np.float32))
    x = torch.from_numpy(np.stack(images))[:, None]
    y = torch.from_numpy(np.stack(masks))[:, None]
    return x, y


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["nlcen", "nlce_unet"])
def test_training_steps_reduce_loss(shared_dataset, name):
    x, y = _load(shared_dataset("cxr_lung_montgomery_shenzhen"))
    assert 0.05 < y.mean() < 0.95  # lungs and background both present
    if name == "nlcen":
        net = NLCEN(spatial_dims=2, in_channels=1, out_channels=2)
    else:
        net = NLCEUNet(2, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weights=[0.25] * 5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    net.train()
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
