"""A network behind a MONAI inferer, as one module: what the attacks and the evaluators differentiate and score."""

from __future__ import annotations

import torch
from monai.inferers import Inferer
from torch import nn

from monai_advseg.attacks.gradient import network_logits
from monai_advseg.inferers.sliding_window import streamed_inferer

__all__ = ["InferredNetwork"]


class InferredNetwork(nn.Module):
    """``x -> inferer(x, network)`` as a module (a deep-supervision network's first output), so the attack core can
    differentiate through sliding windows and an evaluator scores the pipeline it attacks.

    The network is a registered submodule: the core's ``.modules()`` / ``.eval()`` calls reach its layers. With
    ``streamed``, a MONAI ``SlidingWindowInferer`` is replaced by its streamed counterpart (same output, input gradient
    one window batch at a time: :func:`~monai_advseg.inferers.streamed_inferer`); any other inferer is used as given.

    Examples::

        >>> from monai.inferers import SimpleInferer
        >>> module = InferredNetwork(torch.nn.Conv2d(1, 2, 3, padding=1), SimpleInferer())
        >>> module(torch.rand(1, 1, 8, 8)).shape
        torch.Size([1, 2, 8, 8])

    Args:
        network: the network, returning logits ``(B, C, *spatial)`` or a deep-supervision sequence of them.
        inferer: the MONAI inferer the network is run through.
        streamed: stream a ``SlidingWindowInferer``'s input gradient (False: use ``inferer`` unchanged).
    """

    def __init__(self, network: nn.Module, inferer: Inferer, streamed: bool = True) -> None:
        super().__init__()
        self.network = network
        self.inferer = streamed_inferer(inferer, streamed)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return network_logits(self.inferer(image, self.network))
