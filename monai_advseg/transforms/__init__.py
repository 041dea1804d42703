from monai_advseg.transforms.adversarial import FGSM, FGSMd, InverseFGSM, InverseFGSMd, IterativeFGSM, IterativeFGSMd
from monai_advseg.transforms.dicom_seg import WriteDicomSegd

__all__ = ["FGSM", "FGSMd", "InverseFGSM", "InverseFGSMd", "IterativeFGSM", "IterativeFGSMd", "WriteDicomSegd"]
