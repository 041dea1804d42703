"""The default attack loss is the per-voxel cross-entropy SUMMED, not averaged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import disk_batch, small_unet

from monai_advseg.attacks import fgsm, summed_cross_entropy


@pytest.mark.parametrize("spatial", [(5, 7), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("classes", [2, 4])
def test_summed_cross_entropy_is_the_summed_reduction(spatial, classes):
    generator = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(2, classes, *spatial, generator=generator, dtype=torch.float64)
    indices = torch.randint(0, classes, (2, 1, *spatial), generator=generator)
    expected = F.cross_entropy(logits, indices[:, 0], reduction="sum")
    one_hot = F.one_hot(indices[:, 0], classes).movedim(-1, 1).to(logits.dtype)
    assert torch.allclose(summed_cross_entropy(logits, indices), expected, rtol=1e-12, atol=0)
    assert torch.allclose(summed_cross_entropy(logits, one_hot), expected, rtol=1e-12, atol=0)


def test_summed_cross_entropy_of_half_logits_is_computed_in_float32():
    generator = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(2, 3, 16, 16, generator=generator)).bfloat16()
    indices = torch.randint(0, 3, (2, 1, 16, 16), generator=generator)
    loss = summed_cross_entropy(logits, indices)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, F.cross_entropy(logits.float(), indices[:, 0], reduction="sum"))


def _mean_cross_entropy(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, label[:, 0].long())


def test_default_fgsm_loss_keeps_the_fp32_gradient_signs_under_fp16_autocast_where_a_mean_loses_them():
    # A 2 x 256 x 256 batch: the mean divides each voxel's logit gradient by 131072, which in fp16 is subnormal or
    # zero, so the backward through the fp16 network zeroes or flips many input-gradient signs. The sum does not.
    network = small_unet().eval()
    image, label = disk_batch(2, size=256)
    epsilon = 0.01
    reference = (fgsm(network, image, label, epsilon) - image).sign()  # float32, no autocast
    summed_fp32 = fgsm(network, image, label, epsilon, loss_fn=summed_cross_entropy)
    # x + eps * sign up to the one ulp the exact ball takes off where float32 rounding would overshoot epsilon
    assert torch.allclose(summed_fp32, image + epsilon * reference, rtol=0, atol=2 * torch.finfo(torch.float32).eps)
    with torch.autocast("cpu", dtype=torch.float16):
        default = fgsm(network, image, label, epsilon)
        summed = fgsm(network, image, label, epsilon, loss_fn=summed_cross_entropy)
        mean = fgsm(network, image, label, epsilon, loss_fn=_mean_cross_entropy)
    assert torch.equal(default, summed)

    def agreement(result: torch.Tensor) -> float:
        return float(((result - image).sign() == reference).double().mean())

    def zeroed(result: torch.Tensor) -> float:
        return float((result == image).double().mean())

    assert agreement(summed) >= 0.995
    assert agreement(mean) < agreement(summed) - 0.01
    assert zeroed(summed) < 0.001 < 0.01 < zeroed(mean)
