"""Context encoding layer of EncNet (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018)."""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["ContextEncoding", "encode_residuals"]


def encode_residuals(x: torch.Tensor, codewords: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """Aggregated soft-assignment residuals ``e_k = sum_i a_ik (x_i - d_k)`` in compact form.

    ``a_ik = softmax_k(-s_k ||x_i - d_k||^2)``. Expanding ``||x_i - d_k||^2 = ||x_i||^2 - 2 x_i.d_k + ||d_k||^2`` and
    ``e_k = (A^T X)_k - (sum_i a_ik) d_k`` needs only ``B x K x N`` and ``B x C x N`` tensors; the textbook form
    materialises ``B x N x K x C`` residuals (2.6 GB instead of about 130 MiB at N=16384, K=32, C=256).

    Args:
        x: descriptors in channel-first layout (a flattened feature map), shape ``(B, C, N)``.
        codewords: ``(K, C)``.
        smoothing: smoothing factors ``s_k``, shape ``(K,)``.

    Returns:
        ``E`` of shape ``(B, K, C)``.
    """
    # Channel-first throughout: matmuls read the transposed views in place, where a (B, N, C) view of a conv output
    # would be copied (and the copy kept for backward).
    x_sq = (x * x).sum(dim=1, keepdim=True)  # (B, 1, N)
    d_sq = (codewords * codewords).sum(dim=1).unsqueeze(-1)  # (K, 1)
    dist = x_sq - 2.0 * torch.matmul(codewords, x) + d_sq  # (B, K, N)
    assign = torch.softmax(-smoothing.unsqueeze(-1) * dist, dim=1)
    return torch.matmul(assign, x.transpose(1, 2)) - assign.sum(dim=2).unsqueeze(-1) * codewords


class ContextEncoding(nn.Module):
    """EncNet encoding layer followed by the channel-attention factors ``gamma = sigmoid(W_gamma e)``.

    A 1x1 convolution (with batch norm and ReLU, as in EncNet's implementation) maps the ``C``-channel input to
    ``C'`` channels; the ``N`` positions are soft-assigned to ``K`` learned codewords ``d_k`` with learned smoothing
    factors ``s_k``; the aggregated residuals ``e_k`` go through ``BN_ReLU`` and are summed over ``k`` into the global
    context ``e`` (``C'`` values), and ``gamma = sigmoid(W_gamma e)`` gives one factor per input channel.

    Normalisation of the codeword vectors: ``e_k`` is a ``(B, K, C')`` tensor. As in EncNet's code, it is normalised
    by ``BatchNorm1d(K)``, i.e. one mean/variance per codeword computed over the batch *and* the ``C'`` components.
    This is well defined for batch size 1 in training mode (``C' > 1`` values per statistic), unlike a
    ``BatchNorm1d(C')`` on ``(B, C')`` vectors (statistics over the batch only, which raises for a batch of 1). It
    standardises each codeword's residual profile, which also removes the scale difference between codewords that
    attract many positions (large ``e_k``) and those that attract few.

    EncNet averages over ``k``; the paper writes a sum, used here. The sum is ``K`` times the mean, so with
    PyTorch's default ``nn.Linear`` initialisation the logits ``W_gamma e`` would start ``K`` times EncNet's and
    most gates saturated (in a fresh NLCEN on chest X-rays, 24-32 % of the E2 gates below 0.05 and 22-34 % above
    0.95, mean ``sigmoid'`` 0.06-0.10). ``W_gamma`` therefore starts at ``1/K`` of that initialisation: the logits
    start as EncNet's and the gates near 1/2 (in a fresh NLCEN on chest X-rays, at most 0.1 % of any level's gates
    outside (0.05, 0.95) and the mean ``sigmoid'`` 0.24-0.25, its maximum being 1/4). The factor ``K`` is matched at
    initialisation only: the optimiser's steps on ``W_gamma`` are not rescaled, so the sum's logits still move
    faster in training than the mean's would. ``docs/results/nlce_gate_init.md`` measures both initialisations.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: ``C``, the number of input channels (and of ``gamma`` values).
        encoding_channels: ``C'``; defaults to ``in_channels``.
        num_codes: ``K``, the number of codewords.

    """

    def __init__(
        self, spatial_dims: int, in_channels: int, encoding_channels: int | None = None, num_codes: int = 32
    ) -> None:
        super().__init__()
        cp = encoding_channels if encoding_channels is not None else in_channels
        if cp < 2:
            raise ValueError("encoding_channels must be at least 2 (BatchNorm1d over codewords needs C' > 1).")
        self.in_channels = in_channels
        self.encoding_channels = cp
        self.num_codes = num_codes
        self.reduce = Convolution(
            spatial_dims, in_channels, cp, kernel_size=1, act="relu", norm="batch", bias=False, conv_only=False
        )
        # EncNet's initialisation: codewords uniform in +-1/sqrt(K C'), smoothing factors in (0, 1).
        bound = 1.0 / math.sqrt(num_codes * cp)
        self.codewords = nn.Parameter(torch.empty(num_codes, cp).uniform_(-bound, bound))
        self.smoothing = nn.Parameter(torch.empty(num_codes).uniform_(0.0, 1.0))
        self.codeword_norm = nn.BatchNorm1d(num_codes)
        self.fc = nn.Linear(cp, in_channels)
        # The paper sums the K codeword vectors where EncNet averages them, so with the default nn.Linear init the
        # logits W_gamma e are K times EncNet's and most gates start saturated at 0 or 1 (mean sigmoid' 0.06-0.10 in a
        # fresh NLCEN's E2). Dividing the initial W_gamma by K keeps the paper's sum in the forward pass and starts
        # from EncNet's logits: gates near 1/2, where they can learn.
        with torch.no_grad():
            self.fc.weight.div_(num_codes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Global context ``e = sum_k BN_ReLU(e_k)``.

        Args:
            x: feature map ``(B, C, *spatial)``.

        Returns:
            ``e`` of shape ``(B, C')``.
        """
        z = self.reduce(x)
        b = z.shape[0]
        z = z.reshape(b, self.encoding_channels, -1)  # (B, C', N)
        e = encode_residuals(z, self.codewords, self.smoothing)
        return torch.relu(self.codeword_norm(e)).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: feature map ``(B, C, *spatial)``.

        Returns:
            ``gamma`` of shape ``(B, C)``, values in ``(0, 1)``.
        """
        return torch.sigmoid(self.fc(self.encode(x)))
