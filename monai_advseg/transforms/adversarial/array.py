"""Array transforms that wrap the attack core for offline pipelines (e.g. writing adversarial copies to disk).

The inputs are channel-first without a batch dimension, as everywhere in MONAI transforms; the network runs on its own
device and the result comes back in the input's type (MetaTensor meta data preserved), device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import convert_to_dst_type, convert_to_tensor
from torch import nn

from monai_advseg.attacks import fgsm, inverse_fgsm, inverse_mask, iterative_fgsm
from monai_advseg.attacks.gradient import LossFn

__all__ = ["FGSM", "InverseFGSM", "IterativeFGSM"]


def _network_device(network: nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class _AttackTransform(Transform):
    """Batches one channel-first sample, attacks it with the core and converts the result back."""

    def __init__(
        self,
        network: nn.Module,
        epsilon: float,
        clip_range: Sequence[float] | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        if epsilon < 0:
            raise ValueError(f"{type(self).__name__}: epsilon must be >= 0, got {epsilon}")
        self.network = network
        self.epsilon = epsilon
        self.clip_range = clip_range
        self.loss_fn = loss_fn

    def _attack(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor, label: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args:
            img: channel-first image ``(C, *spatial)``, numpy or tensor (MetaTensor meta data is kept).
            label: channel-first label ``(1 or C, *spatial)``.

        Returns:
            The attacked image, of the same type, device and dtype as ``img``.
        """
        device = _network_device(self.network)
        image = convert_to_tensor(img, track_meta=False, device=device, dtype=torch.float32)
        target = convert_to_tensor(label, track_meta=False, device=device)
        attacked = self._attack(image[None], target[None])[0]
        output, *_ = convert_to_dst_type(attacked, img, dtype=getattr(img, "dtype", None))
        return output


class FGSM(_AttackTransform):
    """``x + epsilon * sign(grad L)``: see :func:`monai_advseg.attacks.fgsm`.

    Args:
        network: the trained segmentation network to attack.
        epsilon: strength in the image's units.
        clip_range: ``(lo, hi)`` valid intensity range, or None.
        loss_fn: attack loss, default summed cross-entropy.
    """

    def _attack(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return fgsm(self.network, image, label, self.epsilon, loss_fn=self.loss_fn, clip_range=self.clip_range)


class InverseFGSM(_AttackTransform):
    """``x - epsilon * sign(grad L)``: see :func:`monai_advseg.attacks.inverse_fgsm`. Arguments as :class:`FGSM`."""

    def _attack(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return inverse_fgsm(self.network, image, label, self.epsilon, loss_fn=self.loss_fn, clip_range=self.clip_range)


class IterativeFGSM(_AttackTransform):
    """Basic iterative method: see :func:`monai_advseg.attacks.iterative_fgsm`.

    Args:
        network, epsilon, clip_range, loss_fn: as :class:`FGSM`.
        alpha: step size in the image's units.
        steps: iterations; None for the Kurakin schedule.
        targeted: descend towards a target instead of ascending the loss on the label.
        inverse_target_classes: with ``targeted``, attack towards :func:`~monai_advseg.attacks.inverse_mask` of the
            label with this many classes (the NLCE paper's attack); None uses the label itself as the target.
    """

    def __init__(
        self,
        network: nn.Module,
        epsilon: float,
        alpha: float,
        steps: int | None = None,
        targeted: bool = False,
        inverse_target_classes: int | None = None,
        clip_range: Sequence[float] | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        super().__init__(network, epsilon, clip_range, loss_fn)
        if inverse_target_classes is not None and not targeted:
            raise ValueError("IterativeFGSM: inverse_target_classes only applies to a targeted attack")
        self.alpha = alpha
        self.steps = steps
        self.targeted = targeted
        self.inverse_target_classes = inverse_target_classes

    def _attack(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if self.inverse_target_classes is not None:
            label = inverse_mask(label, self.inverse_target_classes)
        return iterative_fgsm(
            self.network,
            image,
            label,
            self.epsilon,
            alpha=self.alpha,
            steps=self.steps,
            targeted=self.targeted,
            loss_fn=self.loss_fn,
            clip_range=self.clip_range,
        )
