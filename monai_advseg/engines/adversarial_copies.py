"""Offline (two-stage) adversarial augmentation: write FGSM / inverse-FGSM copies of the training images to disk.

The paper's procedure: 1) train on the originals; 2) attack the trained model to make copies of the training images
(labels unchanged); 3) train on originals + copies. :class:`AdversarialCopyGenerator` is step 2, and
:func:`training_items` assembles the datalist of step 3.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from torch import nn

from monai_advseg.attacks import fgsm_pair
from monai_advseg.data import check_datalist_files
from monai_advseg.data.folders import strip_suffix
from monai_advseg.engines.adversarial_augmentation import parse_augmentations
from monai_advseg.engines.flags import as_flag

__all__ = ["AdversarialCopyGenerator", "check_online_only", "training_items"]

logger = logging.getLogger(__name__)


def check_online_only(names: Sequence[str], where: str) -> None:
    """Refuse ``"gaussian"`` in offline augmentation: the trainer draws its noise afresh every iteration.

    Noise written to disk would be one fixed draw per image, a data set of ``n`` noisy images instead of the noise
    distribution that randomized smoothing certifies, so offline Gaussian copies are refused rather than supported.

    Raises:
        ValueError: when ``names`` holds ``"gaussian"``.
    """
    if "gaussian" in names:
        raise ValueError(
            f"{where}: augmentation 'gaussian' is online only (set online to true): the trainer draws fresh noise "
            "every iteration, while copies on disk would fix one draw per image"
        )


class AdversarialCopyGenerator:
    """Attack a trained network to write adversarial copies of images in their source geometry, plus a datalist.

    For every item, ``loading`` reads the image and label in their source geometry and intensities, and
    ``preparation`` (the training pre-processing after loading: intensity window, resize, ...) makes the network's
    input. The FGSM / inverse-FGSM perturbation is computed there from one gradient
    (:func:`~monai_advseg.attacks.fgsm_pair`), mapped back to the source grid with the inverse of ``preparation``'s
    invertible (spatial) transforms and to source intensities through the window, bounded by epsilon again, and
    added to the source image.

    Only what the network sees is perturbed. ``preparation`` clips the source to ``intensity_window``, so the network
    sees a voxel outside the window as the window's edge, and no change within the epsilon ball of such a voxel can
    reach the network unless the voxel is moved to the edge first (a -1024 HU voxel rewritten to -175 HU with window
    (-175, 250)), which would change the source far beyond epsilon. So voxels outside the window are written
    unchanged (the attack's step there is dropped), and voxels inside it get ``x + delta`` kept inside the window
    (as the attack keeps its input in ``input_range``). Every copy therefore lies within ``x +- epsilon`` of the
    source in source units (epsilon divided by the window's scale; up to float32 rounding), and when ``preparation``
    does not resample, each in-window voxel is the network-space copy, ``clip(x +- epsilon * sign(grad))``, in
    source units.

    Output layout (written to a temporary folder and renamed into place, so a failure leaves nothing behind)::

        output_dir/fgsm/<name>.nii.gz, output_dir/inverse_fgsm/<name>.nii.gz   float32, the source affine
                                                                           (NIfTI sources: their whole header)
        output_dir/labels/<label file>                                       the label files, copied
        output_dir/datalist.json    {"training": [{"image", "label", "augmentation", "source"}, ...]}

    Args:
        network: the trained network (weights loaded), run in eval mode on ``device``.
        datalist: items with ``image_key`` and ``label_key`` file paths (the training split only).
        loading: transform reading an item into channel-first MetaTensors (e.g. LoadImaged + EnsureChannelFirstd).
        preparation: transform from loaded item to network input; its spatial transforms must be invertible.
        output_dir: folder to create.
        augmentations: ``"fgsm"``, ``"inverse_fgsm"``, ``"both"`` or a list.
        epsilon: strength in network input units.
        intensity_window: source intensities ``(lo, hi)`` that ``preparation`` maps linearly onto ``input_range``
            (clipping outside it); source voxels outside it are copied unchanged.
        input_range: the network input range, also the clip range of the attack.
        device: where the network runs.
        overwrite: replace an existing ``output_dir``; otherwise an existing one is an error.
        image_key, label_key: datalist keys.

    Raises:
        FileExistsError: ``output_dir`` exists and ``overwrite`` is False (checked before any work).
        ValueError: bad augmentation names (``"gaussian"`` is online only), epsilon or ranges; from :meth:`run`, a
            NIfTI source whose loaded affine differs from its file's (``loading`` flipped, reoriented or resampled
            it) or whose copy's shape does.
    """

    def __init__(
        self,
        network: nn.Module,
        datalist: Sequence[Mapping[str, Any]],
        loading: Callable,
        preparation: Callable,
        output_dir: str | Path,
        augmentations: str | Sequence[str] = "both",
        epsilon: float = 0.1,
        intensity_window: Sequence[float] = (0.0, 255.0),
        input_range: Sequence[float] = (0.0, 1.0),
        device: str | torch.device = "cpu",
        overwrite: bool = False,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        self.augmentations = parse_augmentations(augmentations)
        check_online_only(self.augmentations, "AdversarialCopyGenerator")
        if not self.augmentations:
            raise ValueError("AdversarialCopyGenerator: augmentations is 'none'; nothing to generate")
        if not float(epsilon) >= 0:
            raise ValueError(f"AdversarialCopyGenerator: epsilon must be >= 0, got {epsilon!r}")
        window, target = [float(v) for v in intensity_window], [float(v) for v in input_range]
        if window[0] >= window[1] or target[0] >= target[1]:
            raise ValueError(f"intensity_window {window} and input_range {target} must both be (lo, hi) with lo < hi")
        self.network = network
        self.datalist = list(datalist)
        self.loading = loading
        self.preparation = preparation if isinstance(preparation, Compose) else Compose(preparation)
        self.output_dir = Path(output_dir)
        self.epsilon = float(epsilon)
        self.window, self.input_range = window, target
        self.units_per_source = (target[1] - target[0]) / (window[1] - window[0])
        self.device = torch.device(device)
        self.overwrite = as_flag(overwrite, "overwrite")
        self.image_key, self.label_key = image_key, label_key
        if not self.datalist:
            raise ValueError("AdversarialCopyGenerator: the datalist is empty")

    def _source_perturbations(self, prepared: dict, copies: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = prepared[self.image_key]
        kinds = list(copies)
        # One inverse call for all kinds: the perturbations travel as channels of one tensor, because inverting
        # consumes the transform records that the image and label carry.
        stacked = torch.cat([copies[kind].cpu() - image.as_tensor() for kind in kinds], dim=0)
        delta = MetaTensor(stacked, meta=dict(image.meta))
        delta.applied_operations = list(image.applied_operations)
        restored = self.preparation.inverse({self.image_key: delta, self.label_key: prepared[self.label_key]})
        source_epsilon = self.epsilon / self.units_per_source
        source_delta = restored[self.image_key].as_tensor().div(self.units_per_source)
        source_delta = source_delta.clamp(-source_epsilon, source_epsilon)
        channels = image.shape[0]
        return {kind: source_delta[i * channels : (i + 1) * channels] for i, kind in enumerate(kinds)}

    def _write_item(self, item: Mapping[str, Any], staging: Path) -> list[dict[str, str]]:
        loaded = self.loading(dict(item))
        source = loaded[self.image_key]
        image_path, label_path = Path(item[self.image_key]), Path(item[self.label_key])
        affine, header = np.asarray(source.affine, dtype=np.float64), None
        if image_path.name.endswith((".nii", ".nii.gz")):
            # The source's own header: the copy keeps its affine, qform/sform codes, pixdims and units exactly
            # (MONAI's reader exposes only the affine); the data type becomes float32 without scaling.
            original = nib.load(image_path)
            # The copy's voxels are in the loaded grid but its header is the file's: a loading pipeline that flipped
            # or reoriented the image (which a square slice passes the shape check with) would put the copy out of
            # register with its label.
            if affine.shape != original.affine.shape or not np.allclose(affine, original.affine):
                raise ValueError(
                    f"{image_path}: the loaded image's affine {np.round(affine, 4).tolist()} differs from the file's "
                    f"{np.round(original.affine, 4).tolist()}; the loading transforms must keep the source geometry "
                    "(no flip, reorientation or resampling)"
                )
            affine, header = original.affine, original.header.copy()
            header.set_data_dtype(np.float32)
            header.set_slope_inter(1.0, 0.0)
            header["cal_min"], header["cal_max"] = 0.0, 0.0  # they described the source's intensities
        prepared = self.preparation({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in loaded.items()})
        image = prepared[self.image_key].as_tensor()[None].to(self.device, torch.float32)
        label = prepared[self.label_key].as_tensor()[None].to(self.device)
        pair = fgsm_pair(self.network, image, label, self.epsilon, clip_range=self.input_range)
        copies = {kind: dict(zip(("fgsm", "inverse_fgsm"), pair, strict=True))[kind][0] for kind in self.augmentations}
        perturbations = self._source_perturbations(prepared, copies)
        name = strip_suffix(image_path.name, (".nii.gz", ".nii", ".png", ".jpg", ".jpeg")) or image_path.stem
        label_copy = staging / "labels" / label_path.name
        shutil.copy2(label_path, label_copy)
        values = source.as_tensor().float()
        # the voxels the network sees unclipped (see the class docstring for why the others are left as they are)
        visible = (values >= self.window[0]) & (values <= self.window[1])
        entries = []
        for kind in self.augmentations:
            perturbed = (values + perturbations[kind]).clamp(self.window[0], self.window[1])
            written = torch.where(visible, perturbed, values)
            path = staging / kind / f"{name}.nii.gz"
            array = written[0].numpy().astype(np.float32)
            if header is not None and array.shape != header.get_data_shape():
                raise ValueError(
                    f"{image_path}: copy shape {array.shape} differs from the source's {header.get_data_shape()}"
                )
            nib.save(nib.Nifti1Image(array, affine, header), path)
            final = self.output_dir / kind / path.name
            entries.append(
                {
                    self.image_key: str(final),
                    self.label_key: str(self.output_dir / "labels" / label_copy.name),
                    "augmentation": kind,
                    "source": str(image_path),
                }
            )
        return entries

    def run(self) -> Path:
        """Write the copies and the datalist.

        Returns:
            The path of ``output_dir/datalist.json``.
        """
        if self.output_dir.exists() and not self.overwrite:
            raise FileExistsError(f"{self.output_dir}: output folder exists; pass overwrite=True to replace it")
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        self.network.to(self.device)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.", dir=self.output_dir.parent))
        try:
            for folder in (*self.augmentations, "labels"):
                (staging / folder).mkdir()
            entries = []
            for index, item in enumerate(self.datalist):
                entries.extend(self._write_item(item, staging))
                logger.info("adversarial copies: %d/%d images", index + 1, len(self.datalist))
            (staging / "datalist.json").write_text(json.dumps({"training": entries}, indent=2))
            if self.output_dir.exists():
                shutil.rmtree(self.output_dir)
            staging.rename(self.output_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return self.output_dir / "datalist.json"


def training_items(
    train_items: Sequence[Mapping[str, Any]],
    augmentation: str | Sequence[str],
    online: bool,
    generated_datalist: str | Path | None,
) -> list[dict[str, Any]]:
    """The training datalist: the originals, plus the generated copies when augmenting offline.

    Args:
        train_items: the original training items.
        augmentation: ``"none" | "fgsm" | "inverse_fgsm" | "gaussian" | "both"`` or a list of names
            (``"gaussian"`` only online).
        online: True when the trainer makes copies itself (nothing is added here); text like "false" is accepted.
        generated_datalist: ``datalist.json`` written by :class:`AdversarialCopyGenerator`.

    Returns:
        A new list.

    Raises:
        ValueError: unknown augmentation names, ``"gaussian"`` offline, or copies of a requested kind missing from
            the generated datalist.
        FileNotFoundError: offline augmentation without the generated datalist.
    """
    names = parse_augmentations(augmentation)
    items = [dict(item) for item in train_items]
    if as_flag(online, "online") or not names:
        return items
    check_online_only(names, "offline augmentation (online false)")
    if generated_datalist is None or not Path(generated_datalist).is_file():
        raise FileNotFoundError(
            f"{generated_datalist}: offline augmentation ({list(names)}) needs the copies written by "
            "configs/generate_adversarial.json; run it first, or set online to true"
        )
    # Plain JSON, not load_decathlon_datalist: that one rewrites any value naming an existing relative path, and
    # "fgsm" is also a folder name here.
    generated = json.loads(Path(generated_datalist).read_text())["training"]
    check_datalist_files(generated, source=str(generated_datalist))
    for name in names:
        if not any(entry.get("augmentation") == name for entry in generated):
            raise ValueError(f"{generated_datalist}: holds no {name!r} copies; regenerate with augmentation {name!r}")
    # Only the originals' keys: a batch mixing items with and without "augmentation"/"source" cannot be collated.
    keys = list(items[0]) if items else ["image", "label"]
    return items + [{key: entry[key] for key in keys} for entry in generated if entry.get("augmentation") in names]
