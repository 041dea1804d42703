from __future__ import annotations

from .blocks import NLCE, ContextEncoding, NonLocalBlock
from .nets import NLCEN, NLCEUNet

__all__ = ["NLCE", "NLCEN", "ContextEncoding", "NLCEUNet", "NonLocalBlock"]
