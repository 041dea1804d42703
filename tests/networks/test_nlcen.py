from __future__ import annotations

import pytest
import torch
from monai.losses import DeepSupervisionLoss
from monai.networks.nets import ResNetFeatures

from monai_advseg.networks.nets import NLCEN
from monai_advseg.networks.nets.nlcen import _ZeroPadShortcut


def test_2d_training_list_and_eval_tensor():
    net = NLCEN(spatial_dims=2, in_channels=3, out_channels=4)
    x = torch.randn(2, 3, 64, 96)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == 5
    assert all(o.shape == (2, 4, 64, 96) for o in outs)
    out = net.eval()(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, net.forward_all(x)[0])


def test_3d_shapes():
    net = NLCEN(spatial_dims=3, in_channels=1, out_channels=2)
    outs = net(torch.randn(2, 1, 32, 32, 32))
    assert [o.shape for o in outs] == [(2, 2, 32, 32, 32)] * 5
    assert net.eval()(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


def test_pyramid_channels_follow_backbone():
    net = NLCEN(spatial_dims=2, backbone="resnet50").eval()
    pyr = net.pyramid(torch.randn(1, 1, 64, 64))
    assert [p.shape[1] for p in pyr] == [256, 512, 1024, 2048]
    assert [p.shape[2] for p in pyr] == [16, 8, 4, 2]


def test_backbone_matches_monai_and_passes_shortcut_gradient():
    net = NLCEN(spatial_dims=2, backbone="resnet18").eval()
    ref = ResNetFeatures("resnet18", pretrained=False, spatial_dims=2, in_channels=1).eval()
    ref.load_state_dict(net.backbone.state_dict())
    x = torch.randn(1, 1, 64, 64, requires_grad=True)
    for f, f_ref in zip(net.backbone(x), ref(x), strict=True):
        torch.testing.assert_close(f, f_ref)
    # MONAI's type-A shortcut concatenates ``out.data``; ours must carry the gradient through the shortcut.
    block = net.backbone.layer2[0]
    z = torch.randn(1, 64, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(block.downsample(z).sum(), z)
    assert g[:, :, ::2, ::2].eq(1).all() and g.sum() == 64 * 16


def test_deep_supervision_loss_equals_paper_formula():
    ce = torch.nn.CrossEntropyLoss()

    def loss(inp, target):
        return ce(inp, target[:, 0].long())

    ds = DeepSupervisionLoss(loss, weights=[0.25] * 5)
    net = NLCEN(spatial_dims=2, out_channels=3)
    x = torch.randn(2, 1, 32, 32)
    y = torch.randint(0, 3, (2, 1, 32, 32))
    refined, *coarse = net(x)
    expected = 0.25 * sum(loss(g, y) for g in coarse) + 0.25 * loss(refined, y)
    torch.testing.assert_close(ds([refined, *coarse], y), expected)
    # A four-entry list would silently switch to weight_mode="exp": check this trap is still there.
    assert DeepSupervisionLoss(loss, weights=[0.25] * 4).get_weights(5) == [1.0, 0.5, 0.25, 0.125, 0.0625]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        NLCEN(spatial_dims=1)
    with pytest.raises(ValueError):
        NLCEN(backbone="vgg16")


def test_input_gradient_matches_finite_difference():
    # Attacks step along grad_x: the analytic directional derivative must match a central difference (float64).
    # MONAI's own type-A shortcut (``out.data``) would drop a part of this gradient and fail here.
    net = NLCEN(spatial_dims=2, out_channels=2).double().eval()
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 32, 32, dtype=torch.float64)
    v = torch.randn_like(x)
    (grad,) = torch.autograd.grad((net(x) * w).sum(), x)
    h = 1e-6
    with torch.no_grad():
        numeric = ((net(x + h * v) * w).sum() - (net(x - h * v) * w).sum()) / (2 * h)
    torch.testing.assert_close((grad * v).sum(), numeric, rtol=1e-5, atol=1e-8)


def test_sliding_window_inference_in_eval_mode():
    from monai.inferers import sliding_window_inference

    net = NLCEN(spatial_dims=2, out_channels=3).eval()
    x = torch.rand(1, 1, 80, 96)
    with torch.no_grad():
        out = sliding_window_inference(x, roi_size=(64, 64), sw_batch_size=2, predictor=net, overlap=0.25)
        assert out.shape == (1, 3, 80, 96)
        # a window that covers the whole image must give the direct prediction
        full = sliding_window_inference(x, roi_size=(80, 96), sw_batch_size=1, predictor=net)
        torch.testing.assert_close(full, net(x))


def _downsamples(net):
    layers = (net.backbone.layer1, net.backbone.layer2, net.backbone.layer3, net.backbone.layer4)
    return [block.downsample for layer in layers for block in layer if block.downsample is not None]


@pytest.mark.parametrize("backbone, channels", [("resnet18", [128, 256, 512]), ("resnet50", [256, 512, 1024, 2048])])
def test_type_b_shortcut_is_a_strided_projection_with_batch_norm(backbone, channels):
    """shortcut_type="B" (the original ResNet's projection): a 1x1 convolution with the block's stride and a batch
    norm, as MONAI's ResNet(shortcut_type="B") builds it, for resnet18 (MONAI's default there is type A) as well."""
    net = NLCEN(spatial_dims=2, backbone=backbone, shortcut_type="B")
    shortcuts = _downsamples(net)
    assert [s[0].out_channels for s in shortcuts] == channels
    for shortcut, stride in zip(shortcuts, [1, 2, 2, 2][-len(channels) :], strict=True):
        conv, norm = shortcut
        assert isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d)
        assert conv.kernel_size == (1, 1) and conv.stride == (stride, stride)
    outs = net(torch.randn(2, 1, 64, 64))
    assert [o.shape for o in outs] == [(2, 2, 64, 64)] * 5


def test_type_b_shortcut_in_3d():
    net = NLCEN(spatial_dims=3, shortcut_type="B")
    assert all(isinstance(s[0], torch.nn.Conv3d) and isinstance(s[1], torch.nn.BatchNorm3d) for s in _downsamples(net))
    assert [o.shape for o in net(torch.randn(2, 1, 32, 32, 32))] == [(2, 2, 32, 32, 32)] * 5


def test_type_b_shortcut_state_dict_matches_monai_resnet():
    from monai.networks.nets import ResNet
    from monai.networks.nets.resnet import get_inplanes

    net = NLCEN(spatial_dims=2, backbone="resnet18", shortcut_type="B")
    monai = ResNet(
        "basic", [2, 2, 2, 2], get_inplanes(), spatial_dims=2, n_input_channels=1, conv1_t_stride=2,
        shortcut_type="B", feed_forward=False, bias_downsample=True,
    )  # fmt: skip
    theirs = {k: v.shape for k, v in monai.state_dict().items()}
    assert {k: v.shape for k, v in net.backbone.state_dict().items()} == theirs


@pytest.mark.parametrize("shortcut_type", ["A", "B"])
def test_shortcut_types_keep_the_input_gradient(shortcut_type):
    """The shortcut passes the gradient: the analytic input gradient matches a central difference (float64), for a
    type-A resnet50 too (its zero-pad shortcut widens 64 to 256 channels at stride 1)."""
    for backbone in ("resnet18", "resnet50"):
        net = NLCEN(spatial_dims=2, backbone=backbone, shortcut_type=shortcut_type).double().eval()
        expected = _ZeroPadShortcut if shortcut_type == "A" else torch.nn.Sequential
        assert all(isinstance(s, expected) for s in _downsamples(net))
        x = torch.rand(1, 1, 32, 32, dtype=torch.float64, requires_grad=True)
        w = torch.randn(1, 2, 32, 32, dtype=torch.float64)
        v = torch.randn_like(x)
        (grad,) = torch.autograd.grad((net(x) * w).sum(), x)
        h = 1e-6
        with torch.no_grad():
            numeric = ((net(x + h * v) * w).sum() - (net(x - h * v) * w).sum()) / (2 * h)
        torch.testing.assert_close((grad * v).sum(), numeric, rtol=1e-5, atol=1e-8)


def test_default_shortcut_follows_monai_per_model():
    assert all(isinstance(s, _ZeroPadShortcut) for s in _downsamples(NLCEN(backbone="resnet18")))
    assert all(isinstance(s, torch.nn.Sequential) for s in _downsamples(NLCEN(backbone="resnet50")))
    with pytest.raises(ValueError, match="shortcut_type must be 'A', 'B' or None.*'C'"):
        NLCEN(shortcut_type="C")


@pytest.fixture(scope="module")
def cxr_images(shared_dataset):
    """Eight real chest X-rays (Montgomery / Shenzhen), intensities / 255, resized to 96 x 96 as the CXR bundle does."""
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize, ScaleIntensityRange

    folder = shared_dataset("cxr_lung_montgomery_shenzhen") / "images"
    load = Compose(
        [LoadImage(image_only=True), EnsureChannelFirst(), ScaleIntensityRange(0, 255, 0, 1), Resize((96, 96))]
    )
    paths = sorted(folder.glob("*.png"))
    return torch.stack([load(str(path)).as_tensor() for path in paths[:4] + paths[-4:]])


@pytest.mark.parametrize("seed", [0, 1])
def test_fresh_nlcen_gates_start_near_one_half(cxr_images, seed):
    """What ContextEncoding's docstring states: with W_gamma at 1/K of nn.Linear's default, a fresh NLCEN's gates on
    real chest X-rays are near 1/2 at every level, almost none saturated (with the default init, a quarter to a third
    of the E2 gates were below 0.05 and as many above 0.95)."""
    torch.manual_seed(seed)
    net = NLCEN(spatial_dims=2).train()
    gates = []
    for nlce in net.nlce:
        nlce.encoding.register_forward_hook(lambda module, args, output: gates.append(output.detach()))
    with torch.no_grad():
        net(cxr_images)
    assert len(gates) == 4
    for level, gate in enumerate(gates, start=2):
        saturated = ((gate < 0.05) | (gate > 0.95)).float().mean()
        assert saturated <= 0.002, f"E{level}: {saturated:.4f} of the gates outside (0.05, 0.95)"
        assert (gate * (1 - gate)).mean() > 0.235, f"E{level}"  # sigmoid' near its maximum 1/4
        assert (gate - 0.5).abs().mean() < 0.08, f"E{level}"
