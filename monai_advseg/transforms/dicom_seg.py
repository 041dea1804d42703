"""Post-processing transform that writes a DICOM-SEG next to the NIfTI prediction of a DICOM series input."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_advseg.data.dicom_seg import write_dicom_seg

__all__ = ["WriteDicomSegd"]

logger = logging.getLogger(__name__)


class WriteDicomSegd(MapTransform):
    """Write each prediction whose input was a DICOM series folder as a DICOM-SEG (see
    :func:`~monai_advseg.data.write_dicom_seg`), named like the NIfTI that ``SaveImaged`` wrote for it with ``.dcm``
    in place of ``output_ext`` (``case_seg.nii.gz`` -> ``case_seg.dcm``).

    Place it after ``SaveImaged(..., savepath_in_metadict=True)``, on the prediction inverted to the input geometry
    (``Invertd``) and discretised to class indices (``AsDiscreted(argmax=True)``). Predictions of NIfTI inputs have
    no DICOM source: they are skipped with a one-line warning naming the input, so a mixed datalist still runs.

    Args:
        keys: prediction keys.
        segment_names: class index -> segment name, e.g. ``{1: "liver", 2: "spleen"}``.
        enabled: ``False`` makes the transform a no-op (the bundle's ``dicom_seg`` switch).
        output_ext: the ``output_ext`` of the ``SaveImaged`` before it.
        overwrite: replace an existing SEG file; by default an existing file is an error.
        algorithm_name: the AlgorithmName written in the segment descriptions.
        allow_missing_keys: as MONAI's ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        segment_names: Mapping[int, str],
        enabled: bool = True,
        output_ext: str = ".nii.gz",
        overwrite: bool = False,
        algorithm_name: str = "monai_advseg",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.segment_names = {int(k): str(v) for k, v in dict(segment_names).items()}
        self.enabled = enabled
        self.output_ext = output_ext if output_ext.startswith(".") else f".{output_ext}"
        self.overwrite = overwrite
        self.algorithm_name = algorithm_name

    def seg_path(self, saved_to: str) -> Path:
        """The SEG path for the NIfTI file ``saved_to``."""
        saved = Path(saved_to)
        stem = saved.name[: -len(self.output_ext)] if saved.name.endswith(self.output_ext) else saved.stem
        return saved.with_name(f"{stem}.dcm")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", None) or {}
            source, saved_to = meta.get("filename_or_obj"), meta.get("saved_to")
            if not source or not Path(str(source)).is_dir():
                logger.warning("no DICOM-SEG for %s: the input is not a DICOM series folder", source or key)
                continue
            if not saved_to:
                raise ValueError(
                    f"{type(self).__name__}: {key!r} has no 'saved_to' path; put it after "
                    "SaveImaged(..., savepath_in_metadict=True)"
                )
            write_dicom_seg(
                d[key],
                str(source),
                self.seg_path(str(saved_to)),
                self.segment_names,
                overwrite=self.overwrite,
                algorithm_name=self.algorithm_name,
            )
        return d
