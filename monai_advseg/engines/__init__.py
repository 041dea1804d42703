"""MONAI engines: the augmentation trainer (adversarial and noise copies), the robustness and certification
evaluators, and their distributed ending."""

from monai_advseg.engines.adversarial_augmentation import (
    AUGMENTATIONS,
    AdversarialAugmentationTrainer,
    adversarial_augmentations,
    check_noise_sigma,
    online_augmentations,
    parse_augmentations,
)
from monai_advseg.engines.adversarial_copies import AdversarialCopyGenerator, training_items
from monai_advseg.engines.certification import CertificationEvaluator, default_radii
from monai_advseg.engines.diagnostics import GradientMaskingDiagnostics
from monai_advseg.engines.distributed import end_process_group
from monai_advseg.engines.flags import as_flag
from monai_advseg.engines.one_pass import OnePassEvaluator
from monai_advseg.engines.robustness import ATTACKS, RobustnessEvaluator, load_network_weights
from monai_advseg.engines.scoring import MultiLabelScorer, SegmentationScorer

__all__ = [
    "ATTACKS",
    "AUGMENTATIONS",
    "AdversarialAugmentationTrainer",
    "AdversarialCopyGenerator",
    "CertificationEvaluator",
    "GradientMaskingDiagnostics",
    "OnePassEvaluator",
    "RobustnessEvaluator",
    "MultiLabelScorer",
    "SegmentationScorer",
    "adversarial_augmentations",
    "as_flag",
    "check_noise_sigma",
    "default_radii",
    "end_process_group",
    "load_network_weights",
    "online_augmentations",
    "parse_augmentations",
    "training_items",
]
