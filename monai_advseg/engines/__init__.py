"""MONAI engines: the adversarial-augmentation trainer and the robustness evaluator."""

from monai_advseg.engines.adversarial_augmentation import AUGMENTATIONS, AdversarialAugmentationTrainer
from monai_advseg.engines.robustness import ATTACKS, RobustnessEvaluator, load_network_weights

__all__ = ["ATTACKS", "AUGMENTATIONS", "AdversarialAugmentationTrainer", "RobustnessEvaluator", "load_network_weights"]
