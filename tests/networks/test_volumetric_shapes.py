"""NLCE (and so its NonLocalBlock) on a 64^3 volume, batch 1, sub-sampling on: forward and backward keep the shapes.

N = 262144 query positions and 32768 sub-sampled keys: the naive attention matrix alone would be 32 GiB in float32,
so this only runs because the attention goes through the O(N)-memory kernel. One run covers both blocks (about 35 s
on one thread here; the attention dominates), the non-local block's output is read with a forward hook.
"""

import pytest
import torch

from monai_advseg.networks.blocks import NLCE, NonLocalBlock

SHAPE = (1, 4, 64, 64, 64)

pytestmark = pytest.mark.slow


def test_nlce_and_nonlocal_block_forward_and_backward_at_64_cubed():
    torch.manual_seed(0)
    module = NLCE(3, SHAPE[1], sub_sample=True, num_codes=8).train()
    assert isinstance(module.nonlocal_block, NonLocalBlock) and module.nonlocal_block.sub_sample
    seen = {}
    module.nonlocal_block.register_forward_hook(lambda m, args, out: seen.update(nonlocal_out=out))
    x = torch.randn(SHAPE, requires_grad=True)
    y = module(x)
    assert y.shape == SHAPE and torch.isfinite(y).all()
    assert seen["nonlocal_out"].shape == SHAPE
    y.square().mean().backward()
    assert x.grad is not None and x.grad.shape == SHAPE and torch.isfinite(x.grad).all()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.shape == parameter.shape, name
        assert torch.isfinite(parameter.grad).all(), name
    # the non-local branch's output projection is zero at init, its gradient is not: the block can learn
    assert any(float(p.grad.abs().sum()) > 0 for p in module.nonlocal_block.parameters())
