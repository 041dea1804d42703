import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged
from tiny_models import disk_batch, linear_pixel_model, small_unet

from monai_advseg.attacks import fgsm, inverse_fgsm, inverse_mask, iterative_fgsm
from monai_advseg.transforms import FGSM, FGSMd, InverseFGSM, InverseFGSMd, IterativeFGSM, IterativeFGSMd


def test_array_transforms_equal_the_core_on_one_sample(device):
    """The transforms attack on the network's device and hand the result back where the input was (here the CPU)."""
    network = small_unet().eval().to(device)
    image, label = disk_batch(1)
    on_device = image.to(device), label.to(device)
    fgsm_copy = FGSM(network, 0.05, (0, 1))(image[0], label[0])
    assert fgsm_copy.device == image.device
    assert torch.equal(fgsm_copy, fgsm(network, *on_device, 0.05, clip_range=(0, 1))[0].cpu())
    assert torch.equal(InverseFGSM(network, 0.05)(image[0], label[0]), inverse_fgsm(network, *on_device, 0.05)[0].cpu())
    targeted = IterativeFGSM(network, 0.05, 0.01, targeted=True, inverse_target_classes=2)(image[0], label[0])
    target = inverse_mask(on_device[1], 2)
    expected = iterative_fgsm(network, on_device[0], target, 0.05, alpha=0.01, targeted=True)[0]
    assert torch.equal(targeted, expected.cpu())


def test_meta_data_and_types_are_preserved():
    network = linear_pixel_model()
    affine = torch.diag(torch.tensor([0.7, 0.7, 1.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.rand(1, 8, 8), affine=affine, meta={"filename_or_obj": "slice_7.nii.gz"})
    label = (torch.rand(1, 8, 8) > 0.5).long()
    result = FGSM(network, 0.1)(image, label)
    assert isinstance(result, MetaTensor)
    assert torch.equal(result.affine, affine)
    assert result.meta["filename_or_obj"] == "slice_7.nii.gz"
    as_numpy = FGSM(network, 0.1)(image.numpy().astype(np.float64), label.numpy())
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float64
    assert np.allclose(as_numpy, result.numpy(), atol=1e-6)


def test_dictionary_transforms_in_compose_with_a_real_ct_slice(shared_dataset):
    root = shared_dataset("ct_covid_medseg_infnet") / "train"
    load = Compose(
        [
            LoadImaged(keys=("image", "label"), image_only=True),
            EnsureChannelFirstd(keys=("image", "label")),
            ScaleIntensityRanged(keys=("image", "label"), a_min=0, a_max=255, b_min=0, b_max=1),
        ]
    )
    sample = load({"image": str(root / "images" / "0.jpg"), "label": str(root / "masks" / "0.png")})
    sample["label"] = (sample["label"] > 0.5).long()
    # crop to a size the 2-level U-Net accepts
    sample = {key: value[..., :128, :128] for key, value in sample.items()}
    network = small_unet().eval()
    pipeline = Compose([FGSMd("image", "label", network, 0.1, clip_range=(0, 1))])
    attacked = pipeline(dict(sample))
    difference = (attacked["image"] - sample["image"]).abs()
    assert float(difference.max()) <= 0.1 + 1e-6
    assert float((difference > 0).float().mean()) > 0.5
    assert attacked["image"].meta["filename_or_obj"].endswith("0.jpg")
    assert torch.equal(attacked["label"], sample["label"])
    inverse = InverseFGSMd("image", "label", network, 0.1, clip_range=(0, 1))(dict(sample))["image"]
    assert bool(((inverse - sample["image"]).abs() <= 0.1 + 1e-6).all())
    iterative = IterativeFGSMd("image", "label", network, 0.1, alpha=0.02, steps=3)(dict(sample))["image"]
    assert float((iterative - sample["image"]).abs().max()) <= 0.1 + 1e-6


def test_dictionary_transform_bad_inputs():
    network = linear_pixel_model()
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        FGSMd("image", "label", network, -0.1)
    with pytest.raises(KeyError, match="label key 'label'"):
        FGSMd("image", "label", network, 0.1)({"image": torch.rand(1, 4, 4)})
    with pytest.raises(ValueError, match="only applies to a targeted attack"):
        IterativeFGSM(network, 0.1, 0.01, inverse_target_classes=2)
