"""Randomized smoothing for segmentation: per-voxel L2 certificates (SegCertify) for any MONAI network and inferer,
their statistics (Clopper-Pearson bounds, binomial tests, Holm's correction) and certified Dice / Jaccard."""

from monai_advseg.certify.bounds import binomial_upper_tail_p_values, clopper_pearson_lower, holm_reject
from monai_advseg.certify.metrics import certified_scores
from monai_advseg.certify.smoothing import ABSTAIN, smoothed_segmentation

__all__ = [
    "ABSTAIN",
    "binomial_upper_tail_p_values",
    "certified_scores",
    "clopper_pearson_lower",
    "holm_reject",
    "smoothed_segmentation",
]
