"""MONAI engines: the adversarial-augmentation trainer and the robustness evaluator."""

from monai_advseg.engines.adversarial_augmentation import (
    AUGMENTATIONS,
    AdversarialAugmentationTrainer,
    online_augmentations,
    parse_augmentations,
)
from monai_advseg.engines.adversarial_copies import AdversarialCopyGenerator, training_items
from monai_advseg.engines.flags import as_flag
from monai_advseg.engines.robustness import ATTACKS, RobustnessEvaluator, load_network_weights

__all__ = [
    "ATTACKS",
    "AUGMENTATIONS",
    "AdversarialAugmentationTrainer",
    "AdversarialCopyGenerator",
    "RobustnessEvaluator",
    "as_flag",
    "load_network_weights",
    "online_augmentations",
    "parse_augmentations",
    "training_items",
]
