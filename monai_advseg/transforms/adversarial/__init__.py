from monai_advseg.transforms.adversarial.array import FGSM, InverseFGSM, IterativeFGSM
from monai_advseg.transforms.adversarial.dictionary import FGSMd, InverseFGSMd, IterativeFGSMd

__all__ = ["FGSM", "FGSMd", "InverseFGSM", "InverseFGSMd", "IterativeFGSM", "IterativeFGSMd"]
