"""The pure-torch attack core: every attack in monai_advseg is computed here and nowhere else.

Epsilon and alpha are in the network's input units; :func:`levels_to_epsilon` converts the papers' 0..255 levels.
"""

from monai_advseg.attacks.fgsm import fgsm, fgsm_pair, inverse_fgsm
from monai_advseg.attacks.gradient import attack_mode, input_gradient, project, signed_step
from monai_advseg.attacks.iterative import iterative_fgsm, pgd, segpgd, segpgd_loss
from monai_advseg.attacks.losses import summed_cross_entropy
from monai_advseg.attacks.schedule import PAPER_EPSILON_LEVELS, kurakin_steps, levels_to_epsilon
from monai_advseg.attacks.targets import inverse_mask

__all__ = [
    "PAPER_EPSILON_LEVELS",
    "attack_mode",
    "fgsm",
    "fgsm_pair",
    "input_gradient",
    "inverse_fgsm",
    "inverse_mask",
    "iterative_fgsm",
    "kurakin_steps",
    "levels_to_epsilon",
    "pgd",
    "project",
    "segpgd",
    "segpgd_loss",
    "signed_step",
    "summed_cross_entropy",
]
