from __future__ import annotations

from .nlce_unet import NLCEUNet
from .nlcen import NLCEN

__all__ = ["NLCEN", "NLCEUNet"]
