"""InferredNetwork: the network behind an inferer as one module (what the evaluators attack and score)."""

import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from torch import nn

from monai_advseg.inferers import InferredNetwork, StreamedSlidingWindowInferer


class _DeepSupervision(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, image):
        logits = self.conv(image)
        return [logits, 2 * logits]


def test_the_first_output_of_a_deep_supervision_network_through_the_inferer():
    torch.manual_seed(0)
    network = _DeepSupervision()
    image = torch.rand(2, 1, 12, 12)
    module = InferredNetwork(network, SimpleInferer())
    torch.testing.assert_close(module(image), network.conv(image))
    assert module.network is network and network.conv in list(module.modules())  # .eval() reaches its layers


def test_a_sliding_window_is_streamed_only_when_asked_with_the_same_logits_and_input_gradient():
    torch.manual_seed(0)
    network = nn.Conv2d(1, 2, 3, padding=1).eval()
    inferer = SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=2, overlap=0.5)
    streamed, plain = InferredNetwork(network, inferer), InferredNetwork(network, inferer, streamed=False)
    assert isinstance(streamed.inferer, StreamedSlidingWindowInferer) and plain.inferer is inferer
    image = torch.rand(1, 1, 20, 20, requires_grad=True)
    (grad_streamed,) = torch.autograd.grad(streamed(image).square().sum(), image)
    (grad_plain,) = torch.autograd.grad(plain(image).square().sum(), image)
    torch.testing.assert_close(streamed(image), plain(image))
    torch.testing.assert_close(grad_streamed, grad_plain)
