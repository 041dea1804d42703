from __future__ import annotations

import pytest
import torch

from monai_advseg.networks.blocks import NonLocalBlock


def naive_nonlocal(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """Reference: the explicit N x N affinity ``softmax_j(theta_i . phi_j)`` times ``g``, then ``W_z y + x``."""
    b, ci = x.shape[0], block.inter_channels
    theta = block.theta(x).reshape(b, ci, -1)
    phi = block.pool(block.phi(x)).reshape(b, ci, -1)
    g = block.pool(block.g(x)).reshape(b, ci, -1)
    affinity = torch.softmax(torch.einsum("bci,bcj->bij", theta, phi), dim=-1)
    y = torch.einsum("bij,bcj->bci", affinity, g).reshape([b, ci] + list(x.shape[2:]))
    return block.w_z(y) + x


def _randomise(block: NonLocalBlock) -> None:
    # The zero initialisation would make W_z y vanish and hide any error in y.
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)


@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("shape", [(2, 6, 7, 5), (1, 4, 5, 4, 3)])
def test_matches_naive_softmax_formula(sub_sample, shape, device):
    block = NonLocalBlock(len(shape) - 2, shape[1], sub_sample=sub_sample).double()
    _randomise(block)
    block.eval().to(device)
    x = torch.randn(*shape, dtype=torch.float64).to(device)
    torch.testing.assert_close(block(x), naive_nonlocal(block, x), rtol=1e-10, atol=1e-10)


def test_gradient_matches_naive(device):
    block = NonLocalBlock(2, 6, inter_channels=4, sub_sample=True, norm=None).double()
    _randomise(block)
    block.to(device)
    x = torch.randn(2, 6, 6, 6, dtype=torch.float64).to(device).requires_grad_(True)
    (gx,) = torch.autograd.grad(block(x).square().sum(), x)
    (gx_ref,) = torch.autograd.grad(naive_nonlocal(block, x).square().sum(), x)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("norm", ["batch", "instance", None])
def test_identity_at_init_and_branch_learns(norm):
    block = NonLocalBlock(2, 8, norm=norm)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    out = block(x)
    torch.testing.assert_close(out, x)
    out.square().sum().backward()
    # The branch must still get a gradient: zeroing W_z *and* the norm weight would freeze it at zero forever.
    last = block.w_z[-1] if isinstance(block.w_z, torch.nn.Sequential) else block.w_z
    assert last.weight.grad is not None and last.weight.grad.abs().max() > 0


def test_default_bottleneck_and_odd_sizes():
    block = NonLocalBlock(3, 10)
    assert block.inter_channels == 5
    x = torch.randn(1, 10, 1, 3, 5)
    assert block(x).shape == x.shape


def test_attention_layout_is_eligible_for_the_linear_memory_kernel():
    # Restricting SDPA to the flash kernel raises "no available kernel" if q/k/v are laid out so that CPU SDPA would
    # fall back to the O(N^2) math kernel (e.g. non-contiguous transposed views).
    from torch.nn.attention import SDPBackend, sdpa_kernel

    block = NonLocalBlock(2, 8, sub_sample=True)
    x = torch.randn(2, 8, 16, 12, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = block(x)
        out.square().sum().backward()
    assert x.grad is not None and out.shape == x.shape
