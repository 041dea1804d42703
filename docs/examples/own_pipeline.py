"""Our components inside an existing MONAI pipeline: your Compose, our trainer, transforms and evaluator.

A hospital pipeline reads NIfTI slices in Hounsfield units with its own transforms. This script shows the three
places monai_advseg plugs in, each one line of change:
  1. ``SupervisedTrainer`` -> ``AdversarialAugmentationTrainer`` (online FGSM + inverse-FGSM copies);
  2. ``FGSMd`` / ``InverseFGSMd`` in a ``Compose`` to make attacked copies of a case with the trained network;
  3. ``RobustnessEvaluator`` for the targeted I-FGSM sweep, with the same data loader.
Without ``--dataset_dir`` it writes a few synthetic CT-like NIfTI slices to a temporary folder first.

    python docs/examples/own_pipeline.py [--dataset_dir DIR_WITH_images_AND_masks] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, ScaleIntensityRanged

from monai_advseg.data import paired_folder_datalist
from monai_advseg.demo import synthetic_ct_slices
from monai_advseg.engines import AdversarialAugmentationTrainer, RobustnessEvaluator
from monai_advseg.transforms import FGSMd, InverseFGSMd

HU_WINDOW = (-160.0, 240.0)


def write_synthetic_nifti(folder: Path, count: int = 12) -> Path:
    images, labels = synthetic_ct_slices(count, 64, seed=0)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        nib.save(nib.Nifti1Image(image[0].numpy(), affine), folder / "images" / f"case{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(label[0].numpy().astype(np.uint8), affine), folder / "masks" / f"case{i:02d}.nii.gz")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        dataset_dir = args.dataset_dir or write_synthetic_nifti(Path(scratch) / "data")
        items = paired_folder_datalist(dataset_dir)
        train_items, val_items = items[: len(items) * 3 // 4], items[len(items) * 3 // 4 :]

        # The hospital's own pre-processing: HU window to [0, 1].
        preprocessing = Compose(
            [
                LoadImaged(keys=("image", "label"), image_only=True),
                EnsureChannelFirstd(keys=("image", "label")),
                ScaleIntensityRanged(keys="image", a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0, b_max=1, clip=True),
                EnsureTyped(keys=("image", "label"), dtype=torch.float32),
            ]
        )
        train_loader = DataLoader(Dataset(train_items, preprocessing), batch_size=4, shuffle=True)
        val_loader = DataLoader(Dataset(val_items, preprocessing), batch_size=4)
        network = UNet(2, 1, 2, channels=(16, 32, 64), strides=(2, 2), num_res_units=1, norm="batch")

        # 1. Drop-in replacement for monai.engines.SupervisedTrainer: same arguments plus the augmentation ones.
        trainer = AdversarialAugmentationTrainer(
            device=torch.device("cpu"),
            max_epochs=args.epochs,
            train_data_loader=train_loader,
            network=network,
            optimizer=torch.optim.Adam(network.parameters(), lr=3e-3),
            loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
            augmentations="both",
            epsilon=0.1,  # on the [0, 1] input: 0.1 * 400 HU = 40 HU
            clip_range=(0.0, 1.0),
        )
        trainer.run()
        output = trainer.state.output[0]
        print(
            f"last iteration: loss {output['loss']:.4f}, clean {output['loss_clean']:.4f}, "
            f"FGSM {output['loss_fgsm']:.4f}, inverse FGSM {output['loss_inverse_fgsm']:.4f}"
        )

        # 2. Attacked copies of one case with the trained network, as transforms in a Compose.
        network.eval()
        case = preprocessing(val_items[0])
        attacked = Compose([FGSMd("image", "label", network, 0.05, clip_range=(0, 1))])(dict(case))
        helped = Compose([InverseFGSMd("image", "label", network, 0.05, clip_range=(0, 1))])(dict(case))
        print(
            f"case {Path(val_items[0]['image']).name}: max |FGSM - x| = "
            f"{float((attacked['image'] - case['image']).abs().max()):.3f}, max |inverse - x| = "
            f"{float((helped['image'] - case['image']).abs().max()):.3f} (eps 0.05)"
        )

        # 3. The NLCE paper's robustness sweep on the validation loader (eps in 0..255 levels of the [0, 1] input).
        evaluator = RobustnessEvaluator(
            device=torch.device("cpu"),
            val_data_loader=val_loader,
            network=network,
            epsilons=[0.5, 2, 8],
            intensity_range=(0.0, 1.0),
            progress=False,
        )
        evaluator.run()
        for row in evaluator.results["metrics"]:
            print(f"eps {row['eps_levels']:>4g} levels: Dice {row['mean_dice']:.4f}, Jaccard {row['mean_jaccard']:.4f}")


if __name__ == "__main__":
    main()
