"""Dictionary versions of the attack transforms: ``keys`` name the images, ``label_key`` the label they attack."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from torch import nn

from monai_advseg.attacks.gradient import LossFn
from monai_advseg.transforms.adversarial.array import FGSM, InverseFGSM, IterativeFGSM

__all__ = ["FGSMd", "InverseFGSMd", "IterativeFGSMd"]


class _AttackDictTransform(MapTransform):
    def __init__(self, keys: KeysCollection, label_key: str, attack, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.attack = attack

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.label_key not in d:
            raise KeyError(f"{type(self).__name__}: label key {self.label_key!r} not in the data ({list(d)})")
        for key in self.key_iterator(d):
            d[key] = self.attack(d[key], d[self.label_key])
        return d


class FGSMd(_AttackDictTransform):
    """Dictionary :class:`~monai_advseg.transforms.FGSM`.

    Args:
        keys: image keys to attack. label_key: the label key. Others as the array transform.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        network: nn.Module,
        epsilon: float,
        clip_range: Sequence[float] | None = None,
        loss_fn: LossFn | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, label_key, FGSM(network, epsilon, clip_range, loss_fn), allow_missing_keys)


class InverseFGSMd(_AttackDictTransform):
    """Dictionary :class:`~monai_advseg.transforms.InverseFGSM`; arguments as :class:`FGSMd`."""

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        network: nn.Module,
        epsilon: float,
        clip_range: Sequence[float] | None = None,
        loss_fn: LossFn | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, label_key, InverseFGSM(network, epsilon, clip_range, loss_fn), allow_missing_keys)


class IterativeFGSMd(_AttackDictTransform):
    """Dictionary :class:`~monai_advseg.transforms.IterativeFGSM`; arguments as the array transform plus keys."""

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        network: nn.Module,
        epsilon: float,
        alpha: float,
        steps: int | None = None,
        targeted: bool = False,
        inverse_target_classes: int | None = None,
        clip_range: Sequence[float] | None = None,
        loss_fn: LossFn | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        attack = IterativeFGSM(network, epsilon, alpha, steps, targeted, inverse_target_classes, clip_range, loss_fn)
        super().__init__(keys, label_key, attack, allow_missing_keys)
