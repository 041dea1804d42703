"""Workflows over bundles we did not write: the any-bundle robustness sweep and its epsilon units."""

from monai_advseg.workflows.bundle_robustness import (
    OVERLAY_CONFIG,
    PROPERTIES_FILE,
    PredictionRule,
    SigmoidPrediction,
    bundle_config_files,
    bundle_robustness,
    certify_config,
    first_cases,
    load_bundle_network,
    read_bundle,
    report_config,
)
from monai_advseg.workflows.units import EPSILON_UNITS, EpsilonUnits, IntensityMap, intensity_map

__all__ = [
    "EPSILON_UNITS",
    "OVERLAY_CONFIG",
    "PROPERTIES_FILE",
    "EpsilonUnits",
    "IntensityMap",
    "PredictionRule",
    "SigmoidPrediction",
    "bundle_config_files",
    "bundle_robustness",
    "certify_config",
    "first_cases",
    "intensity_map",
    "load_bundle_network",
    "read_bundle",
    "report_config",
]
