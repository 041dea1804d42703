"""Inferers that every attack can differentiate through: a sliding window whose input gradient is streamed window
by window, so its memory stays that of one window's graph whatever the volume size and ``sw_batch_size``, and a
network behind an inferer as one module."""

from monai_advseg.inferers.inferred_network import InferredNetwork
from monai_advseg.inferers.sliding_window import (
    StreamedSlidingWindowInferer,
    streamed_inferer,
    streamed_sliding_window_inference,
)

__all__ = ["InferredNetwork", "StreamedSlidingWindowInferer", "streamed_inferer", "streamed_sliding_window_inference"]
