"""The pure-torch attack core: every attack in monai_advseg is computed here and nowhere else.

Epsilon and alpha are in the network's input units; :func:`levels_to_epsilon` converts the papers' 0..255 levels.
"""

from monai_advseg.attacks.apgd import APGD_LOSSES, APGDStepRule, apgd, apgd_checkpoints
from monai_advseg.attacks.fgsm import fgsm, fgsm_pair, inverse_fgsm
from monai_advseg.attacks.gradient import attack_mode, input_gradient, project, project_l2, signed_step
from monai_advseg.attacks.iterative import (
    balanced_cross_entropy,
    iterative_fgsm,
    pgd,
    pgd_l2,
    segpgd,
    segpgd_loss,
    segpgd_step_loss,
)
from monai_advseg.attacks.losses import (
    dice_loss,
    jensen_shannon_loss,
    masked_cross_entropy,
    masked_spherical_loss,
    per_channel_binary_cross_entropy,
    per_sample_cross_entropy,
    per_sample_loss,
    summed_cross_entropy,
)
from monai_advseg.attacks.queries import random_search, true_class_probability, uniform_noise
from monai_advseg.attacks.schedule import PAPER_EPSILON_LEVELS, kurakin_steps, kurakin_steps_for, levels_to_epsilon
from monai_advseg.attacks.scoring import (
    argmax_classes,
    case_dice,
    case_scores,
    label_map,
    predicted_classes,
    predicted_label_map,
)
from monai_advseg.attacks.specs import (
    ATTACK_SPECS,
    WORST_CASE_MEMBERS,
    AttackSpec,
    FGSMSpec,
    IterativeFGSMSpec,
    NoiseSpec,
    PGDL2Spec,
    PGDSpec,
    RandomSearchSpec,
    SegPGDSpec,
    WorstCaseSpec,
    build_attack_spec,
)
from monai_advseg.attacks.step_rules import StepContext, StepRule, l2_step_rule, signed_step_rule
from monai_advseg.attacks.sweep import fgsm_sweep, iterative_fgsm_sweep, repeat_for_sweep
from monai_advseg.attacks.targets import class_indices, inverse_mask

__all__ = [
    "APGDStepRule",
    "APGD_LOSSES",
    "ATTACK_SPECS",
    "WORST_CASE_MEMBERS",
    "WorstCaseSpec",
    "apgd",
    "apgd_checkpoints",
    "argmax_classes",
    "case_dice",
    "case_scores",
    "label_map",
    "predicted_classes",
    "predicted_label_map",
    "balanced_cross_entropy",
    "dice_loss",
    "jensen_shannon_loss",
    "masked_cross_entropy",
    "masked_spherical_loss",
    "per_channel_binary_cross_entropy",
    "per_sample_cross_entropy",
    "per_sample_loss",
    "AttackSpec",
    "FGSMSpec",
    "IterativeFGSMSpec",
    "PAPER_EPSILON_LEVELS",
    "NoiseSpec",
    "PGDL2Spec",
    "PGDSpec",
    "RandomSearchSpec",
    "SegPGDSpec",
    "StepContext",
    "StepRule",
    "build_attack_spec",
    "fgsm_sweep",
    "iterative_fgsm_sweep",
    "kurakin_steps_for",
    "repeat_for_sweep",
    "signed_step_rule",
    "attack_mode",
    "fgsm",
    "fgsm_pair",
    "input_gradient",
    "inverse_fgsm",
    "class_indices",
    "inverse_mask",
    "iterative_fgsm",
    "kurakin_steps",
    "levels_to_epsilon",
    "pgd",
    "pgd_l2",
    "project",
    "project_l2",
    "l2_step_rule",
    "random_search",
    "true_class_probability",
    "uniform_noise",
    "segpgd",
    "segpgd_loss",
    "segpgd_step_loss",
    "signed_step",
    "summed_cross_entropy",
]
