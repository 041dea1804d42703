from monai_advseg.transforms.adversarial import FGSM, FGSMd, InverseFGSM, InverseFGSMd, IterativeFGSM, IterativeFGSMd

__all__ = ["FGSM", "FGSMd", "InverseFGSM", "InverseFGSMd", "IterativeFGSM", "IterativeFGSMd"]
