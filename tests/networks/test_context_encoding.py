from __future__ import annotations

import pytest
import torch

from monai_advseg.networks.blocks import ContextEncoding, encode_residuals


def textbook_residuals(x, codewords, smoothing):
    """``e_k = sum_i a_ik r_ik`` with the explicit B x N x K x C residual tensor; ``x`` is (B, C, N)."""
    r = x.transpose(1, 2).unsqueeze(2) - codewords  # (B, N, K, C)
    a = torch.softmax(-smoothing * (r * r).sum(-1), dim=-1)  # (B, N, K)
    return (a.unsqueeze(-1) * r).sum(1)


@pytest.mark.parametrize("b,n,k,c", [(1, 7, 3, 5), (3, 20, 8, 4)])
def test_compact_residuals_match_textbook_forward_and_gradients(b, n, k, c, device):
    x, d = (torch.randn(*shape, dtype=torch.float64).to(device).requires_grad_() for shape in ((b, c, n), (k, c)))
    s = torch.rand(k, dtype=torch.float64).to(device).requires_grad_()
    out = encode_residuals(x, d, s)
    ref = textbook_residuals(x, d, s)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (x, d, s))
    grads_ref = torch.autograd.grad((ref * w).sum(), (x, d, s))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9)


def test_module_matches_textbook_gamma_with_gradients(device):
    enc = ContextEncoding(2, 6, encoding_channels=5, num_codes=4).double().to(device)
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64).to(device).requires_grad_()

    def textbook(x):
        z = enc.reduce(x).flatten(2)
        e = textbook_residuals(z, enc.codewords, enc.smoothing)
        return torch.sigmoid(enc.fc(torch.relu(enc.codeword_norm(e)).sum(1)))

    gamma = enc(x)
    ref = textbook(x)
    torch.testing.assert_close(gamma, ref, rtol=1e-10, atol=1e-10)
    assert gamma.shape == (2, 6)
    params = [x, enc.codewords, enc.smoothing, enc.fc.weight]
    grads = torch.autograd.grad(gamma.sum(), params)
    grads_ref = torch.autograd.grad(ref.sum(), params)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9)


def test_batch_one_training_mode_3d():
    enc = ContextEncoding(3, 4, num_codes=6).train()
    gamma = enc(torch.randn(1, 4, 3, 3, 3))
    assert gamma.shape == (1, 4)
    assert torch.isfinite(gamma).all() and (gamma > 0).all() and (gamma < 1).all()


def test_rejects_single_encoding_channel():
    with pytest.raises(ValueError):
        ContextEncoding(2, 4, encoding_channels=1)


def test_gate_weight_starts_at_one_over_k_of_the_linear_default():
    """The paper's sum over K codewords is kept; W_gamma starts K times smaller than nn.Linear's default bound
    1/sqrt(C'), so the logits start as with EncNet's mean and the gates near 1/2."""
    torch.manual_seed(0)
    enc = ContextEncoding(2, 64, encoding_channels=64, num_codes=32)
    assert enc.fc.weight.abs().max() <= 1.0 / (32 * 64**0.5)
    e = enc.encode(torch.randn(2, 64, 16, 16))
    assert e.min() >= 0 and e.mean() > 5  # a sum of K ReLU'd standardised values: about 0.4 K per entry
    gamma = torch.sigmoid(enc.fc(e))
    assert gamma.min() > 0.3 and gamma.max() < 0.7
