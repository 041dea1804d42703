"""StreamedSlidingWindowInferer: MONAI's output bit for bit, the naive input gradient window batch by window batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer, SlidingWindowInfererAdapt
from monai.networks.nets import UNet
from torch import nn

from monai_advseg.inferers import StreamedSlidingWindowInferer, streamed_inferer, streamed_sliding_window_inference

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from sliding_window_memory import peak_tensor_bytes  # noqa: E402  (benchmarks/ is not a package; tested there)

ROI = (16, 16, 16)


def _unet(spatial_dims: int = 3, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    # batch norm in eval mode with non-trivial running statistics, so the layers are not the identity
    network = UNet(spatial_dims, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch")
    for module in network.modules():
        if isinstance(module, nn.BatchNorm3d | nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return network.to(dtype).eval()


def _gradient(inferer, network, image: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and ``d sum(weight * output) / d image`` (a generic linear functional of the stitched logits)."""
    x = image.detach().clone().requires_grad_(True)
    output = inferer(x, network)
    output = output[0] if isinstance(output, tuple | list) else output
    (grad,) = torch.autograd.grad((output * weight).sum(), x)
    return output.detach(), grad


def _case(shape: tuple[int, ...], seed: int = 1, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(shape, generator=generator, dtype=dtype)
    weight = torch.randn((shape[0], 2, *shape[2:]), generator=generator, dtype=dtype)
    return image, weight


# not divisible by the roi (two images, odd sizes) and smaller than the roi in every dimension (padded)
SHAPES = {"not_divisible": (2, 1, 27, 20, 17), "smaller_than_roi": (1, 1, 10, 12, 9)}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_streamed_gradient_equals_the_naive_one(mode, overlap, shape):
    network = _unet()
    image, weight = _case(shape)
    settings = dict(roi_size=ROI, sw_batch_size=3, overlap=overlap, mode=mode, sigma_scale=0.2)
    naive_out, naive = _gradient(SlidingWindowInferer(**settings), network, image, weight)
    streamed_out, streamed = _gradient(StreamedSlidingWindowInferer(**settings), network, image, weight)
    assert torch.equal(streamed_out, naive_out)  # the forward is MONAI's, bit for bit
    assert naive.abs().max() > 1e-3  # a gradient that could be wrong
    assert torch.allclose(streamed, naive, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("padding_mode", ["constant", "replicate", "reflect", "circular"])
def test_padding_modes_of_a_volume_smaller_than_the_roi(padding_mode):
    network = _unet()
    image, weight = _case((1, 1, 10, 16, 9), seed=2)
    cval = 0.7 if padding_mode == "constant" else 0.0  # torch refuses a fill value for the other modes
    settings = dict(roi_size=ROI, sw_batch_size=2, overlap=0.5, padding_mode=padding_mode, cval=cval)
    naive_out, naive = _gradient(SlidingWindowInferer(**settings), network, image, weight)
    streamed_out, streamed = _gradient(StreamedSlidingWindowInferer(**settings), network, image, weight)
    assert torch.equal(streamed_out, naive_out)
    assert torch.allclose(streamed, naive, rtol=1e-10, atol=1e-13)


def test_float32_gradient_is_the_naive_one_bit_for_bit_on_the_cpu():
    """With ``gradient_batch_size=None`` the windows are recomputed in the forward's batches and their gradients
    summed in autograd's order; the count patches equal MONAI's count map bit for bit (gaussian weights)."""
    network = _unet(dtype=torch.float32)
    image, weight = _case((1, 1, 30, 22, 19), seed=3, dtype=torch.float32)
    settings = dict(roi_size=ROI, sw_batch_size=2, overlap=0.5, mode="gaussian")
    _, naive = _gradient(SlidingWindowInferer(**settings), network, image, weight)
    _, streamed = _gradient(StreamedSlidingWindowInferer(**settings, gradient_batch_size=None), network, image, weight)
    assert torch.equal(streamed, naive)


@pytest.mark.parametrize("gradient_batch_size", [1, 2, 5, None])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_any_gradient_batch_size_gives_the_naive_gradient(mode, gradient_batch_size):
    """Windows recomputed 1 or 2 at a time, 5 (more than sw_batch_size: capped at its 3) or in the forward's
    batches of 3 (None): the same gradient (float64), two images, a volume not divisible by the roi."""
    network = _unet()
    image, weight = _case((2, 1, 27, 20, 17), seed=7)
    settings = dict(roi_size=ROI, sw_batch_size=3, overlap=0.5, mode=mode, sigma_scale=0.2)
    naive_out, naive = _gradient(SlidingWindowInferer(**settings), network, image, weight)
    inferer = StreamedSlidingWindowInferer(**settings, gradient_batch_size=gradient_batch_size)
    streamed_out, streamed = _gradient(inferer, network, image, weight)
    assert torch.equal(streamed_out, naive_out)
    assert naive.abs().max() > 1e-3
    assert torch.allclose(streamed, naive, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_gradient_batch_size_is_refused(bad):
    with pytest.raises(ValueError, match=f"gradient_batch_size must be a positive integer or None.*{bad!r}"):
        StreamedSlidingWindowInferer(ROI, gradient_batch_size=bad)
    with pytest.raises(ValueError, match="gradient_batch_size"):
        streamed_sliding_window_inference(torch.rand(1, 1, 16, 16, 16), ROI, 1, nn.Identity(), gradient_batch_size=bad)


def test_2d_and_roi_sizes_taken_from_the_image():
    network = _unet(spatial_dims=2)
    image, weight = _case((2, 1, 37, 28), seed=4)  # -1: the whole (even) width
    settings = dict(roi_size=(16, -1), sw_batch_size=4, overlap=0.25, mode="gaussian")
    _, naive = _gradient(SlidingWindowInferer(**settings), network, image, weight)
    _, streamed = _gradient(StreamedSlidingWindowInferer(**settings), network, image, weight)
    assert torch.allclose(streamed, naive, rtol=1e-10, atol=1e-13)


def test_devices_of_the_windows_and_of_the_stitched_output(device):
    """Windows on ``sw_device`` (the network's), input and stitching on the CPU, as MONAI's arguments say."""
    network = _unet().to(device)
    image, weight = _case((1, 1, 24, 20, 18), seed=5)
    settings = dict(roi_size=ROI, sw_batch_size=2, overlap=0.25, sw_device=device, device="cpu")
    naive_out, naive = _gradient(SlidingWindowInferer(**settings), network, image, weight)
    streamed_out, streamed = _gradient(StreamedSlidingWindowInferer(**settings), network, image, weight)
    assert streamed_out.device.type == "cpu" and streamed.device.type == "cpu"
    assert torch.equal(streamed_out, naive_out)
    assert torch.allclose(streamed, naive, rtol=1e-10, atol=1e-13)


def test_buffered_stitching_and_a_cached_weight_map():
    network = _unet()
    image, weight = _case((1, 1, 26, 20, 36), seed=6)
    reference = SlidingWindowInferer(
        ROI, sw_batch_size=2, overlap=0.5, mode="gaussian", cache_roi_weight_map=True, buffer_steps=2
    )
    streamed = streamed_inferer(reference)
    assert type(streamed) is StreamedSlidingWindowInferer and streamed.roi_weight_map is reference.roi_weight_map
    naive_out, naive = _gradient(reference, network, image, weight)
    streamed_out, grad = _gradient(streamed, network, image, weight)
    assert torch.equal(streamed_out, naive_out)
    assert torch.allclose(grad, naive, rtol=1e-10, atol=1e-13)


def test_only_an_exact_sliding_window_inferer_is_replaced():
    inferer = SlidingWindowInferer(ROI)
    assert streamed_inferer(inferer, streamed=False) is inferer
    adapt = SlidingWindowInfererAdapt(ROI)  # its __call__ adapts the stitching device: kept as the user gave it
    assert streamed_inferer(adapt) is adapt
    already = StreamedSlidingWindowInferer(ROI)
    assert streamed_inferer(already) is already


def test_input_only_parameters_get_no_gradient_and_the_naive_path_stays_available():
    network = _unet()
    image, weight = _case((1, 1, 20, 20, 20))
    x = image.clone().requires_grad_(True)
    (StreamedSlidingWindowInferer(ROI, sw_batch_size=2)(x, network) * weight).sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0
    assert all(p.grad is None for p in network.parameters())
    (StreamedSlidingWindowInferer(ROI, sw_batch_size=2, streamed=False)(image, network) * weight).sum().backward()
    assert all(p.grad is not None for p in network.parameters())  # MONAI's plain path trains


def test_double_backward_is_refused():
    network = _unet()
    image, weight = _case((1, 1, 20, 20, 20))
    x = image.clone().requires_grad_(True)
    output = StreamedSlidingWindowInferer(ROI, sw_batch_size=2)(x, network)
    # a loss whose gradient depends on the logits (as cross-entropy's does) asks for the windows' second derivative
    (grad,) = torch.autograd.grad((output**2 * weight).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


def test_a_network_in_training_mode_is_refused():
    network = _unet().train()
    x = torch.rand(1, 1, 20, 20, 20, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="eval mode"):
        StreamedSlidingWindowInferer(ROI)(x, network)
    with torch.no_grad():  # nothing is recomputed without a gradient: MONAI's path, any mode
        assert StreamedSlidingWindowInferer(ROI)(x, network).shape == (1, 2, 20, 20, 20)


class _DeepSupervision(nn.Module):
    """Main logits plus a second head, as deep-supervision networks return them."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network(x)
        return logits, 3 * logits.flip(1)


def test_deep_supervision_outputs_stitch_the_main_logits():
    network = _DeepSupervision(_unet()).eval()
    image, weight = _case((1, 1, 22, 20, 18))
    naive_out, naive = _gradient(SlidingWindowInferer(ROI, 2, 0.25), network, image, weight)
    streamed_out, streamed = _gradient(StreamedSlidingWindowInferer(ROI, 2, 0.25), network, image, weight)
    assert torch.equal(streamed_out, naive_out)
    assert torch.allclose(streamed, naive, rtol=1e-10, atol=1e-13)


def test_metatensor_inputs_give_metatensor_outputs_and_the_same_gradient():
    network = _unet()
    image, weight = _case((1, 1, 20, 18, 17))
    meta = MetaTensor(image.clone(), meta={"filename_or_obj": "case.nii.gz"}).requires_grad_(True)
    output = StreamedSlidingWindowInferer(ROI, 2, 0.25)(meta, network)
    assert isinstance(output, MetaTensor) and output.meta["filename_or_obj"] == "case.nii.gz"
    (grad,) = torch.autograd.grad((output.as_tensor() * weight).sum(), meta)
    reference = MetaTensor(image.clone(), meta={"filename_or_obj": "case.nii.gz"}).requires_grad_(True)
    naive_out = SlidingWindowInferer(ROI, 2, 0.25)(reference, network)
    (naive,) = torch.autograd.grad((naive_out.as_tensor() * weight).sum(), reference)
    assert torch.equal(output.as_tensor(), naive_out.as_tensor())
    assert torch.allclose(grad.as_tensor(), naive.as_tensor(), rtol=1e-10, atol=1e-13)


def test_an_output_patch_of_another_size_is_refused():
    class Halving(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, -x], 1)[:, :, ::2, ::2, ::2]

    x = torch.rand(1, 1, 20, 20, 20, requires_grad=True)
    with pytest.raises(ValueError, match="spatial size"):
        StreamedSlidingWindowInferer(ROI)(x, Halving().eval())


def test_the_functional_form_matches_monai_and_refuses_a_condition():
    network = _unet()
    image, weight = _case((1, 1, 19, 21, 18))

    def streamed(x, net):
        return streamed_sliding_window_inference(x, ROI, 2, net, 0.25, "gaussian", progress=True)

    naive_out, naive = _gradient(SlidingWindowInferer(ROI, 2, 0.25, "gaussian"), network, image, weight)
    streamed_out, grad = _gradient(streamed, network, image, weight)
    assert torch.equal(streamed_out, naive_out)
    assert torch.allclose(grad, naive, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="condition"):
        streamed_sliding_window_inference(image, ROI, 2, network, condition=image)


class _SavedBytes:
    """Peak bytes of the tensors autograd holds for backward (the graph's memory), counted by saved-tensor hooks."""

    def __init__(self, skip: torch.Tensor) -> None:
        self.skip, self.live, self.peak = skip.data_ptr(), 0, 0

    def pack(self, tensor: torch.Tensor):
        size = 0 if tensor.data_ptr() == self.skip else tensor.numel() * tensor.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        return _Held(tensor, size, self)

    @staticmethod
    def unpack(held: _Held) -> torch.Tensor:
        return held.tensor


class _Held:
    def __init__(self, tensor: torch.Tensor, size: int, counter: _SavedBytes) -> None:
        self.tensor, self.size, self.counter = tensor, size, counter

    def __del__(self) -> None:
        self.counter.live -= self.size


def _graph_peak(inferer, network, shape, skip_input: bool = True) -> int:
    image, weight = _case(shape, dtype=torch.float32)
    x = image.requires_grad_(True)
    # the input itself is not graph memory (the streamed path saves it for its backward)
    counter = _SavedBytes(skip=x if skip_input else torch.empty(0))
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        output = inferer(x, network)
        torch.autograd.grad(output, x, weight)
    return counter.peak


def test_the_graph_held_at_once_is_one_window_batch_whatever_the_volume():
    network = _unet(dtype=torch.float32)
    settings = dict(roi_size=ROI, sw_batch_size=2, overlap=0.25)
    shapes = [(1, 1, 32, 28, 28), (1, 1, 48, 40, 40)]  # 3 x 2 x 2 = 12 and 4 x 3 x 3 = 36 windows
    batched = StreamedSlidingWindowInferer(**settings, gradient_batch_size=None)  # recomputed 2 windows at a time
    streamed = [_graph_peak(batched, network, s) for s in shapes]
    naive = [_graph_peak(SlidingWindowInferer(**settings), network, s) for s in shapes]
    # the graph of one batch of two windows, its input included
    one_batch = _graph_peak(lambda x, net: net(x), network, (2, 1, *ROI), skip_input=False)
    assert streamed[0] == streamed[1] == one_batch  # flat in the volume size: one window batch at a time
    assert naive[1] > 2.5 * naive[0] and naive[1] > 15 * streamed[1]  # the naive graph holds every window


def test_the_default_gradient_batch_holds_two_windows_at_most_whatever_sw_batch_size():
    network = _unet(dtype=torch.float32)
    shape = (1, 1, 32, 28, 28)

    def windows_graph(count: int) -> int:
        return _graph_peak(lambda x, net: net(x), network, (count, 1, *ROI), skip_input=False)

    for sw_batch_size, held in ((1, 1), (2, 2), (4, 2)):  # never more than the forward's own batch
        inferer = StreamedSlidingWindowInferer(ROI, sw_batch_size=sw_batch_size, overlap=0.25)
        assert _graph_peak(inferer, network, shape) == windows_graph(held)
    single = StreamedSlidingWindowInferer(ROI, sw_batch_size=4, overlap=0.25, gradient_batch_size=1)
    assert _graph_peak(single, network, shape) == windows_graph(1)
    more = StreamedSlidingWindowInferer(ROI, sw_batch_size=2, overlap=0.25, gradient_batch_size=8)
    assert _graph_peak(more, network, shape) == windows_graph(2)  # capped at sw_batch_size
    batched = StreamedSlidingWindowInferer(ROI, sw_batch_size=4, overlap=0.25, gradient_batch_size=None)
    assert _graph_peak(batched, network, shape) == windows_graph(4)


def test_the_streamed_backward_allocates_12_bytes_per_voxel_beyond_the_windows():
    """In the backward (float32, two classes) only the logits' gradient (8 B/voxel) and the input's (4 B/voxel) are
    volume-sized: the count map is rebuilt per window patch. Measured as the growth of the backward's peak from one
    volume to a larger one, so the windows' own graph (the same for both) cancels; with a volume-sized count map
    (the previous layout) it grew by 16 B/voxel."""
    torch.manual_seed(0)
    network = nn.Conv3d(1, 2, 3, padding=1).eval()  # a small graph per window: the volume-sized tensors dominate
    inferer = StreamedSlidingWindowInferer((32, 32, 32), sw_batch_size=4, overlap=0.25)  # 8 and 36 windows

    def backward_peak(shape: tuple[int, ...]) -> int:
        x = torch.rand(shape).requires_grad_(True)
        weight = torch.randn((1, 2, *shape[2:]))
        loss = (inferer(x, network) * weight).sum()  # the product's backward needs only `weight`
        return peak_tensor_bytes(lambda: torch.autograd.grad(loss, x))

    small, large = (1, 1, 48, 48, 48), (1, 1, 96, 64, 64)
    per_voxel = (backward_peak(large) - backward_peak(small)) / (torch.Size(large).numel() - torch.Size(small).numel())
    assert 11.5 < per_voxel < 12.5
