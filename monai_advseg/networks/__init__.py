from __future__ import annotations

from .auxiliary_bn import (
    AuxiliaryBatchNormState,
    auxiliary_bn,
    auxiliary_bn_layers,
    convert_to_auxiliary_bn,
    has_auxiliary_bn,
)
from .blocks import NLCE, ContextEncoding, NonLocalBlock
from .nets import NLCEN, NLCEUNet

__all__ = [
    "NLCE",
    "NLCEN",
    "AuxiliaryBatchNormState",
    "ContextEncoding",
    "NLCEUNet",
    "NonLocalBlock",
    "auxiliary_bn",
    "auxiliary_bn_layers",
    "convert_to_auxiliary_bn",
    "has_auxiliary_bn",
]
