from __future__ import annotations

import pytest
import torch

from monai_advseg.networks.blocks import NLCE


@pytest.mark.parametrize("gate", ["paper", "encnet"])
@pytest.mark.parametrize("shape", [(2, 8, 6, 5), (2, 4, 4, 4, 3)])
def test_gate_formula(gate, shape):
    sd = len(shape) - 2
    block = NLCE(sd, shape[1], num_codes=4, gate=gate).eval()
    with torch.no_grad():
        for p in block.nonlocal_block.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(*shape)
    f_z = block.nonlocal_block(x)
    gamma = block.encoding(f_z).reshape(shape[0], shape[1], *([1] * sd))
    expected = f_z * gamma if gate == "paper" else torch.relu(f_z + f_z * gamma)
    out = block(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)


def test_paper_gate_only_attenuates():
    block = NLCE(2, 8, num_codes=4).eval()
    x = torch.randn(2, 8, 6, 6)
    f_z = block.nonlocal_block(x)
    assert (block(x).abs() <= f_z.abs() + 1e-6).all()


def test_rejects_unknown_gate():
    with pytest.raises(ValueError):
        NLCE(2, 8, gate="se")
