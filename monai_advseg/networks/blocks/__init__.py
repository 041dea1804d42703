from __future__ import annotations

from .context_encoding import ContextEncoding, encode_residuals
from .nlce import NLCE
from .nonlocal_block import NonLocalBlock

__all__ = ["ContextEncoding", "NLCE", "NonLocalBlock", "encode_residuals"]
