"""TorchScript (as ``ckpt_export``) and ONNX (as ``onnx_export``) round-trips in eval mode, 2D.

Tolerance: TorchScript runs the same kernels, so it must match eager to float32 round-off (atol 1e-5). ONNX is checked
with ``onnx.checker`` and ``onnx.reference.ReferenceEvaluator`` (onnxruntime is not a dependency), whose numpy
kernels differ in summation order: atol 1e-4 on logits of order 1.
"""

from __future__ import annotations

import io

import pytest
import torch

from monai_advseg.networks.nets import NLCEN, NLCEUNet

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")


def _nets():
    return {
        "nlcen": NLCEN(spatial_dims=2, in_channels=1, out_channels=2),
        "nlce_unet": NLCEUNet(2, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1),
    }


def _trained_state(net: torch.nn.Module) -> torch.nn.Module:
    # Non-trivial running statistics and non-zero W_z norms, so that the exported graph is really exercised.
    with torch.no_grad():
        net.train()
        for _ in range(2):
            net(torch.randn(2, 1, 64, 64))
        for name, p in net.named_parameters():
            if "w_z" in name:
                p.normal_(0.0, 0.1)
    return net.eval()


@pytest.mark.parametrize("name", ["nlcen", "nlce_unet"])
def test_torchscript_round_trip(name, tmp_path):
    net = _trained_state(_nets()[name])
    x = torch.rand(1, 1, 64, 64)
    path = tmp_path / "net.ts"
    torch.jit.script(net).save(str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-5)
        if name == "nlcen":
            # the scripted model keeps the train/eval switch: a list of five outputs in training mode
            loaded.train()
            outs = loaded(torch.rand(2, 1, 64, 64))
            assert isinstance(outs, list) and len(outs) == 5


@pytest.mark.parametrize("name", ["nlcen", "nlce_unet"])
def test_onnx_round_trip(name):
    from onnx.reference import ReferenceEvaluator

    net = _trained_state(_nets()[name])
    x = torch.rand(1, 1, 64, 64)
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer)
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    (out,) = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})
    with torch.no_grad():
        expected = net(x)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=0, atol=1e-4)
