"""Sliding-window inference whose input gradient is streamed window batch by window batch (bounded memory).

Differentiating MONAI's ``sliding_window_inference`` directly keeps the autograd graph of every window of the volume
alive until the backward pass: memory grows with the volume. Here the forward is MONAI's own
``sliding_window_inference`` run without autograd (the same output, bit for bit), and the backward recomputes a few
windows at a time (``gradient_batch_size``, default two, at most ``sw_batch_size``) with autograd and back-propagates
their share of the output gradient into the input. The share of a window is the output gradient over its patch,
divided by the count map (the sum of the blending weights over all windows, as MONAI normalises) and multiplied by the
window's importance map. The count map is rebuilt patch by patch from the windows that overlap it (no volume-sized
count map). Peak memory is then ``gradient_batch_size`` windows' graph plus the output gradient and the input gradient
(12 bytes per voxel for two float32 classes), whatever the volume size.

Why two: on the CPU, PyTorch runs a batch of one 3D window through its slow native convolution wherever a layer's
``channels x depth x height`` is small (oneDNN only from two samples on, or above 20480), e.g. the spleen bundle's
UNet at 96^3 spends 2x longer per window on a batch of one than of two (forward and backward, measured with
``torch.profiler``: ``slow_conv3d_forward`` against ``mkldnn_convolution``). Two windows at a time keep the backward
as fast per window as the forward's batches, for one more window's graph.

The streamed backward gives the gradient with respect to the *input only*: the network's parameters receive no
gradient (their ``.grad`` stays untouched). This is what attacks need; use ``streamed=False`` (MONAI's plain,
fully differentiable path) to train through the windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from monai.data.meta_tensor import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.inferers.utils import _get_scan_interval  # MONAI's own scan-interval rule, so the windows are the same
from monai.utils import (
    BlendMode,
    PytorchPadMode,
    convert_data_type,
    convert_to_dst_type,
    ensure_tuple,
    ensure_tuple_rep,
    fall_back_tuple,
    look_up_option,
    optional_import,
)
from torch import nn
from torch.autograd.function import once_differentiable

from monai_advseg.attacks.gradient import network_logits

tqdm, _ = optional_import("tqdm", name="tqdm")

__all__ = ["StreamedSlidingWindowInferer", "streamed_inferer", "streamed_sliding_window_inference"]


@dataclass
class _WindowPlan:
    """Everything needed to redo MONAI's window layout and blending in the backward pass."""

    roi_size: Sequence[int] | int
    sw_batch_size: int
    predictor: Callable[..., Any]
    overlap: Sequence[float] | float
    mode: BlendMode | str
    sigma_scale: Sequence[float] | float
    padding_mode: PytorchPadMode | str
    cval: float
    sw_device: torch.device | str | None
    device: torch.device | str | None
    progress: bool
    roi_weight_map: torch.Tensor | None
    buffer_steps: int | None
    buffer_dim: int
    with_coord: bool
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    check_shape: bool = False
    gradient_batch_size: int | None = 2

    def main_logits(self, window: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The predictor's main logits for a window batch (the first item of a deep-supervision output)."""
        logits = network_logits(self.predictor(window, *args, **kwargs))
        # the streamed backward blends with the roi-sized importance map; MONAI's rescaling of a differently sized
        # output (zoom) is not replayed there
        if self.check_shape and tuple(logits.shape[2:]) != tuple(window.shape[2:]):
            raise ValueError(
                f"the streamed gradient needs the network's output patch to have its input's spatial size "
                f"{tuple(window.shape[2:])}, got {tuple(logits.shape[2:])}; use streamed=False"
            )
        return logits

    def infer(self, inputs: torch.Tensor) -> torch.Tensor:
        """MONAI's ``sliding_window_inference`` of the main logits (differentiable iff autograd is on)."""
        return sliding_window_inference(
            inputs,
            self.roi_size,
            self.sw_batch_size,
            self.main_logits,
            self.overlap,
            self.mode,
            self.sigma_scale,
            self.padding_mode,
            self.cval,
            self.sw_device,
            self.device,
            self.progress,
            self.roi_weight_map,
            None,
            self.buffer_steps,
            self.buffer_dim,
            self.with_coord,
            *self.args,
            **self.kwargs,
        )

    def importance_map(
        self, image_size: Sequence[int], roi_size: Sequence[int], sw_device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """The window weight map exactly as MONAI builds it, shaped ``(1, 1, *roi)``."""
        valid_patch_size = get_valid_patch_size(image_size, roi_size)
        if valid_patch_size == roi_size and self.roi_weight_map is not None:
            weight = self.roi_weight_map
        else:
            weight = compute_importance_map(
                ensure_tuple(valid_patch_size),
                mode=self.mode,
                sigma_scale=self.sigma_scale,
                device=sw_device,
                dtype=dtype,
            )
        weight = convert_data_type(weight, torch.Tensor, device=sw_device, dtype=dtype)[0]
        return weight[None, None] if weight.ndim == len(roi_size) else weight

    def input_gradient(self, inputs: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        """``d<grad_output, output>/d inputs``, recomputing ``gradient_batch_size`` windows at a time.

        Args:
            inputs: the forward's input ``(B, C_in, *spatial)``, a plain tensor.
            grad_output: the gradient with respect to the stitched logits ``(B, C, *spatial)``.

        Returns:
            The input gradient, shape, dtype and device of ``inputs``.
        """
        num_spatial = inputs.ndim - 2
        dtype = inputs.dtype  # MONAI stitches in the input's dtype
        batch, _, *image_size_ = inputs.shape
        device = torch.device(self.device or inputs.device)
        sw_device = torch.device(self.sw_device or inputs.device)
        roi_size = fall_back_tuple(self.roi_size, image_size_)
        image_size = tuple(max(image_size_[i], roi_size[i]) for i in range(num_spatial))
        pad_size: list[int] = []  # F.pad order: last spatial dimension first, as MONAI pads
        for k in range(inputs.ndim - 1, 1, -1):
            diff = max(roi_size[k - 2] - inputs.shape[k], 0)
            pad_size.extend([diff // 2, diff - diff // 2])
        padded = any(pad_size)
        pad_mode = look_up_option(self.padding_mode, PytorchPadMode)
        overlap = ensure_tuple_rep(self.overlap, num_spatial)
        scan_interval = _get_scan_interval(image_size, roi_size, num_spatial, overlap)
        slices = dense_patch_slices(image_size, roi_size, scan_interval)
        weight = self.importance_map(image_size, roi_size, sw_device, dtype)

        grad = grad_output.to(device=device, dtype=dtype)
        if padded:  # MONAI crops the padded output back to the input's size: the gradient of the crop is zero-fill
            crop = [
                slice(pad_size[2 * (num_spatial - 1 - d)], pad_size[2 * (num_spatial - 1 - d)] + image_size_[d])
                for d in range(num_spatial)
            ]
            full = torch.zeros((*grad.shape[:2], *image_size), dtype=dtype, device=device)
            full[(slice(None), slice(None), *crop)] = grad
            grad = full
        counts = _WindowCounts(slices, weight.to(device))

        source = F.pad(inputs, pad=pad_size, mode=pad_mode, value=self.cval) if padded else inputs
        grad_source = torch.zeros_like(source)
        num_win = len(slices)
        step = (
            self.sw_batch_size
            if self.gradient_batch_size is None
            else min(self.gradient_batch_size, self.sw_batch_size)
        )
        starts = list(range(0, num_win * batch, step))
        # Last batch first, last window first: the order in which autograd sums the naive path's window gradients
        # (it runs the most recently created nodes first), so overlapping windows add up in the same order whatever
        # the number of windows recomputed at once.
        batches = reversed(starts)
        for start in tqdm(batches, total=len(starts)) if self.progress else batches:
            indices = range(start, min(start + step, num_win * batch))
            windows = [(slice(i // num_win, i // num_win + 1), slice(None), *slices[i % num_win]) for i in indices]
            window_data = torch.cat([source[w] for w in windows]).to(sw_device).requires_grad_(True)
            coords = ([list(w) for w in windows],) if self.with_coord else ()
            with torch.enable_grad():
                logits = self.main_logits(window_data, *coords, *self.args, **self.kwargs)
            # divided window by window by the window's own count patch: no volume-sized count map (same values)
            share = torch.cat([grad[w] / counts.patch(i % num_win) for w, i in zip(windows, indices, strict=True)])
            share = share.to(sw_device) * weight
            # inputs=window_data only: the network's parameters get no gradient, their .grad stays untouched
            (window_grad,) = torch.autograd.grad(logits, window_data, share.to(logits.dtype))
            del logits, share
            window_grad = window_grad.to(source.device, source.dtype)
            for position in reversed(range(len(windows))):
                grad_source[windows[position]] += window_grad[position : position + 1]
            del window_data, window_grad
        del grad
        if not padded:
            return grad_source
        leaf = inputs.detach().requires_grad_(True)
        with torch.enable_grad():  # the gradient of the padding (folds the border back for reflect / replicate)
            (grad_inputs,) = torch.autograd.grad(
                F.pad(leaf, pad=pad_size, mode=pad_mode, value=self.cval), leaf, grad_source
            )
        return grad_inputs


class _WindowCounts:
    """The count map (sum of the blending weights of all windows) over one window's patch, without the volume map.

    Each voxel's weights are added in MONAI's order (window by window, as its count map accumulates them), starting
    from zero, so every value equals MONAI's count map bit for bit; only the windows that overlap the patch are
    visited. Saves a volume-sized tensor (4 bytes per voxel in float32) in the backward pass.
    """

    def __init__(self, slices: Sequence[Sequence[slice]], weight: torch.Tensor) -> None:
        self.slices, self.weight = slices, weight
        self.starts = torch.tensor([[s.start for s in window] for window in slices])
        self.stops = torch.tensor([[s.stop for s in window] for window in slices])

    def patch(self, index: int) -> torch.Tensor:
        """The count map over window ``index``'s patch, shaped like the weight map ``(1, 1, *roi)``."""
        start, stop = self.starts[index], self.stops[index]
        overlapping = ((self.starts < stop) & (self.stops > start)).all(dim=1).nonzero()[:, 0].tolist()
        count = torch.zeros_like(self.weight)
        for other in overlapping:  # ascending: MONAI's order
            low = torch.maximum(self.starts[other], start).tolist()
            high = torch.minimum(self.stops[other], stop).tolist()
            own = [slice(a - s, b - s) for a, b, s in zip(low, high, start.tolist(), strict=True)]
            theirs = [slice(a - s, b - s) for a, b, s in zip(low, high, self.starts[other].tolist(), strict=True)]
            count[(slice(None), slice(None), *own)] += self.weight[(slice(None), slice(None), *theirs)]
        return count


class _StreamedWindows(torch.autograd.Function):
    """forward: MONAI's sliding window without autograd; backward: window batch by window batch."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, plan: _WindowPlan) -> torch.Tensor:
        ctx.plan = plan
        ctx.save_for_backward(inputs)
        return plan.infer(inputs)  # Function.forward runs with autograd off: no window keeps a graph

    @staticmethod
    @once_differentiable  # the recomputed windows are differentiated once; a double backward raises
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (inputs,) = ctx.saved_tensors
        return ctx.plan.input_gradient(inputs, grad_output), None


def _check_gradient_batch_size(value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"gradient_batch_size must be a positive integer or None (sw_batch_size), got {value!r}")


def _training_submodules(predictor: Callable) -> bool:
    return isinstance(predictor, nn.Module) and any(module.training for module in predictor.modules())


def streamed_sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: Sequence[int] | int,
    sw_batch_size: int,
    predictor: Callable[..., Any],
    overlap: Sequence[float] | float = 0.25,
    mode: BlendMode | str = BlendMode.CONSTANT,
    sigma_scale: Sequence[float] | float = 0.125,
    padding_mode: PytorchPadMode | str = PytorchPadMode.CONSTANT,
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    roi_weight_map: torch.Tensor | None = None,
    buffer_steps: int | None = None,
    buffer_dim: int = -1,
    with_coord: bool = False,
    *args: Any,
    streamed: bool = True,
    gradient_batch_size: int | None = 2,
    **kwargs: Any,
) -> torch.Tensor:
    """MONAI's ``sliding_window_inference`` of the main logits, with a streamed (bounded-memory) input gradient.

    The output equals MONAI's ``sliding_window_inference`` with the same arguments bit for bit (its first item for
    a deep-supervision predictor: only the main logits are stitched). When autograd needs the input's gradient
    (``inputs.requires_grad`` under grad mode) and ``streamed`` is True, the forward runs without autograd and the
    backward recomputes ``gradient_batch_size`` windows at a time (see the module docstring): the gradient with
    respect to ``inputs`` equals the naive one up to rounding, with at most that many windows' graph in memory.

    The streamed gradient is for the input only: the predictor's parameters receive none. The backward recomputes
    the windows, so the predictor must be deterministic — an ``nn.Module`` predictor with a submodule in training
    mode (dropout, batch statistics) is refused. Double backward is not supported (it raises).

    Args:
        inputs: ``(B, C, *spatial)`` input; a MetaTensor gives a MetaTensor output, as in MONAI.
        roi_size, sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, sw_device, device, progress,
            roi_weight_map, buffer_steps, buffer_dim, with_coord, args, kwargs: as in MONAI's
            ``sliding_window_inference`` (``process_fn`` and ``condition`` are not supported).
        predictor: the network (or callable) applied to each window batch.
        streamed: False gives MONAI's plain differentiable path (gradients also reach the parameters, memory grows
            with the volume).
        gradient_batch_size: windows recomputed with autograd at once in the streamed backward, at most
            ``sw_batch_size``; None: ``sw_batch_size``. The default 2 bounds the autograd graph at two windows
            whatever ``sw_batch_size`` (the forward still runs ``sw_batch_size`` windows at once, without autograd;
            two, not one, because PyTorch's CPU convolutions are about twice as fast per window from a batch of two
            on, see the module docstring); 1 holds the least memory. The windows' gradients are summed in the same
            order either way.

    Returns:
        The stitched main logits ``(B, C, *spatial)`` on ``device`` (default: the input's).

    Raises:
        ValueError: for a ``condition`` keyword, a ``gradient_batch_size`` that is not a positive integer or None,
            or, when streaming, for a predictor output patch whose spatial size
            differs from its window's, or an ``nn.Module`` predictor in training mode.
    """
    if "condition" in kwargs:
        raise ValueError("streamed_sliding_window_inference does not slice a `condition`; use MONAI's inferer")
    _check_gradient_batch_size(gradient_batch_size)
    plan = _WindowPlan(
        roi_size,
        sw_batch_size,
        predictor,
        overlap,
        mode,
        sigma_scale,
        padding_mode,
        cval,
        sw_device,
        device,
        progress,
        roi_weight_map,
        buffer_steps,
        buffer_dim,
        with_coord,
        args,
        kwargs,
        gradient_batch_size=gradient_batch_size,
    )
    if not (streamed and torch.is_grad_enabled() and inputs.requires_grad):
        return plan.infer(inputs)  # nothing to stream: MONAI's path (with its graph if autograd wants one)
    if _training_submodules(predictor):
        raise ValueError(
            "the streamed gradient recomputes the windows in the backward pass, so the network must be in eval mode "
            "(dropout / batch statistics would differ); call network.eval() or use streamed=False"
        )
    plan.check_shape = True
    meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
    # plain tensors inside the autograd Function: MetaTensor's torch-function hooks stay out of the window loops
    output = _StreamedWindows.apply(inputs.as_subclass(torch.Tensor), plan)
    if meta is not None:
        output = convert_to_dst_type(output, meta, device=output.device)[0]
    return output


class StreamedSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's ``SlidingWindowInferer`` whose input gradient is streamed window batch by window batch.

    The output equals ``SlidingWindowInferer`` with the same arguments bit for bit (the main logits: the first item
    of a deep-supervision output). Its input gradient (any attack differentiating ``inferer(x, network)``) is
    computed by :func:`streamed_sliding_window_inference`: one ``sw_batch_size`` batch of windows in memory at a
    time instead of the whole volume's graph, equal to the naive gradient up to rounding; ``gradient_batch_size``
    windows (default 2, at most ``sw_batch_size``; None: ``sw_batch_size``) are recomputed with autograd at once, so
    the default holds two windows' graph whatever ``sw_batch_size``. Input only: parameters get no gradient; the
    network must be in eval mode; no double backward. ``streamed=False`` is MONAI's plain path.

    Examples::

        >>> from monai.networks.nets import UNet
        >>> net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
        >>> inferer = StreamedSlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25)
        >>> x = torch.rand(1, 1, 24, 24, 20, requires_grad=True)
        >>> inferer(x, net).sum().backward()
        >>> x.grad.shape, next(net.parameters()).grad is None
        (torch.Size([1, 1, 24, 24, 20]), True)

    Args:
        roi_size, sw_batch_size, overlap, mode, sigma_scale, padding_mode, cval, sw_device, device, progress,
            cache_roi_weight_map, cpu_thresh, buffer_steps, buffer_dim, with_coord: as in MONAI's
            ``SlidingWindowInferer``.
        streamed: stream the input gradient (True) or use MONAI's plain differentiable path (False).
        gradient_batch_size: windows recomputed with autograd at once in the streamed backward, at most
            ``sw_batch_size`` (default 2: two windows' graph in memory; 1: the least memory); None: ``sw_batch_size``.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        mode: BlendMode | str = BlendMode.CONSTANT,
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: PytorchPadMode | str = PytorchPadMode.CONSTANT,
        cval: float = 0.0,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        cache_roi_weight_map: bool = False,
        cpu_thresh: int | None = None,
        buffer_steps: int | None = None,
        buffer_dim: int = -1,
        with_coord: bool = False,
        streamed: bool = True,
        gradient_batch_size: int | None = 2,
    ) -> None:
        super().__init__(
            roi_size,
            sw_batch_size,
            overlap,
            mode,
            sigma_scale,
            padding_mode,
            cval,
            sw_device,
            device,
            progress,
            cache_roi_weight_map,
            cpu_thresh,
            buffer_steps,
            buffer_dim,
            with_coord,
        )
        _check_gradient_batch_size(gradient_batch_size)
        self.streamed = streamed
        self.gradient_batch_size = gradient_batch_size

    @classmethod
    def from_inferer(
        cls, inferer: SlidingWindowInferer, streamed: bool = True, gradient_batch_size: int | None = 2
    ) -> StreamedSlidingWindowInferer:
        """The streamed inferer with every setting of ``inferer`` (its cached weight map included).

        Args:
            inferer: a MONAI ``SlidingWindowInferer``.
            streamed, gradient_batch_size: as in the constructor.

        Returns:
            A new :class:`StreamedSlidingWindowInferer`.
        """
        copy = cls(
            inferer.roi_size,
            inferer.sw_batch_size,
            inferer.overlap,
            inferer.mode,
            inferer.sigma_scale,
            inferer.padding_mode,
            inferer.cval,
            inferer.sw_device,
            inferer.device,
            inferer.progress,
            False,
            inferer.cpu_thresh,
            inferer.buffer_steps,
            inferer.buffer_dim,
            inferer.with_coord,
            streamed,
            gradient_batch_size,
        )
        copy.roi_weight_map = inferer.roi_weight_map  # MONAI's cache_roi_weight_map result, shared as is
        return copy

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The stitched main logits of ``network`` over ``inputs``.

        Args:
            inputs: ``(B, C, *spatial)`` input.
            network: the network (or callable) applied to each window batch.
            args, kwargs: passed to ``network``; ``device``, ``buffer_steps``, ``buffer_dim`` override the
                inferer's, as in MONAI.

        Returns:
            ``(B, C, *spatial)`` logits.
        """
        device = kwargs.pop("device", self.device)
        buffer_steps = kwargs.pop("buffer_steps", self.buffer_steps)
        buffer_dim = kwargs.pop("buffer_dim", self.buffer_dim)
        if device is None and self.cpu_thresh is not None and inputs.shape[2:].numel() > self.cpu_thresh:
            device = "cpu"  # stitch in cpu memory if the image is too large, as MONAI's inferer does
        return streamed_sliding_window_inference(
            inputs,
            self.roi_size,
            self.sw_batch_size,
            network,
            self.overlap,
            self.mode,
            self.sigma_scale,
            self.padding_mode,
            self.cval,
            self.sw_device,
            device,
            self.progress,
            self.roi_weight_map,
            buffer_steps,
            buffer_dim,
            self.with_coord,
            *args,
            streamed=self.streamed,
            gradient_batch_size=self.gradient_batch_size,
            **kwargs,
        )


def streamed_inferer(inferer: Any, streamed: bool = True) -> Any:
    """``inferer`` with a streamed input gradient where that is known to be the same function.

    A MONAI ``SlidingWindowInferer`` (that exact class: a subclass such as ``SlidingWindowInfererAdapt`` may change
    what ``__call__`` does) becomes a :class:`StreamedSlidingWindowInferer` with the same settings; anything else,
    or ``streamed=False``, is returned unchanged.

    Args:
        inferer: any inferer.
        streamed: False returns ``inferer`` as it is.

    Returns:
        The inferer to differentiate through.
    """
    if streamed and type(inferer) is SlidingWindowInferer:
        return StreamedSlidingWindowInferer.from_inferer(inferer)
    return inferer
