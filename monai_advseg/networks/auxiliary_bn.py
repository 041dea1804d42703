"""Auxiliary batch norm (AdvProp, Xie et al., CVPR 2020): a twin of every batch-norm layer for adversarial images.

Adversarial and clean images have different feature statistics; one batch norm serving both mixes them, and the
clean images pay for it. AdvProp keeps a second ("auxiliary") batch norm that only the adversarial images pass
through; at test time the main one alone is used, so the deployed network is the plain one.

- :func:`convert_to_auxiliary_bn`: give every ``_BatchNorm`` layer of any ``nn.Module`` (MONAI UNet, NLCEN,
  NLCE-UNet, ...) a twin, in place, like :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`.
- :func:`auxiliary_bn`: a context manager routing every converted layer through its twin (the adversarial passes).
- :class:`AuxiliaryBatchNormState`: the twins' ``state_dict`` / ``load_state_dict`` for the resume checkpoint.

The network's ``state_dict()`` leaves the twins out, so ``model.pt`` and every export load **strictly** into the plain
network, and a plain state dict loads strictly into a converted one (the twins keep their values).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "AuxiliaryBatchNormState",
    "auxiliary_bn",
    "auxiliary_bn_layers",
    "convert_to_auxiliary_bn",
    "has_auxiliary_bn",
]

#: Name of the twin inside a converted layer; distinctive, so that stripping its keys cannot hit a user's module.
TWIN = "auxiliary_bn"


class _WithAuxiliaryBatchNorm:
    """Mixin of a converted layer: its own parameters and buffers are the main batch norm, ``auxiliary_bn`` the twin.

    The layer keeps its class's behaviour (it is a subclass of it, as ``torch.nn.utils.parametrize`` does), so the
    main batch norm's keys, ``isinstance`` checks and ``SyncBatchNorm`` all stay as they were.
    """

    use_auxiliary: bool

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.use_auxiliary:
            return getattr(self, TWIN)(input)
        return super().forward(input)  # type: ignore[misc]


_CLASSES: dict[type, type] = {}


def _converted_class(cls: type) -> type:
    if cls not in _CLASSES:
        name = f"Auxiliary{cls.__name__}"
        converted = type(name, (_WithAuxiliaryBatchNorm, cls), {"__module__": __name__, "__qualname__": name})
        _CLASSES[cls] = converted
        if name not in globals():  # importable by name, so that a whole converted network pickles (torch.save)
            globals()[name] = converted
    return _CLASSES[cls]


# torch's own batch norms get their converted classes at import time, so unpickling finds them in a fresh process
for _cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
    _converted_class(_cls)


def _strip_twin(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for key in [key for key in state_dict if key.startswith(f"{prefix}{TWIN}.")]:
        del state_dict[key]
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        metadata.pop(f"{prefix}{TWIN}", None)


def _ignore_missing_twin(module: nn.Module, incompatible_keys: Any) -> None:
    # a plain (stripped) state dict has no twin keys; the twins keep their values (their state is restored, if at
    # all, by AuxiliaryBatchNormState)
    missing = incompatible_keys.missing_keys
    missing[:] = [key for key in missing if key.split(".")[-2:-1] != [TWIN]]


def convert_to_auxiliary_bn(network: nn.Module, enabled: bool | str = True) -> nn.Module:
    """Give every batch-norm layer of ``network`` an auxiliary twin (in place), for adversarial augmentation.

    Each ``torch.nn.modules.batchnorm._BatchNorm`` (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, ...) becomes a
    subclass of its own class with a child ``auxiliary_bn``: a copy of the layer made now (same affine parameters
    and running statistics), trained separately. Outside :func:`auxiliary_bn` the layer is exactly the original one.
    Convert **before** building the optimizer (the twins' parameters must be in it) and after
    ``convert_sync_batchnorm`` if DDP uses synchronised batch norm; a DDP wrapper then needs
    ``find_unused_parameters=True`` (the clean pass does not use the twins, the adversarial passes not the main ones).

    Args:
        network: any module with batch-norm layers (already converted layers are left as they are).
        enabled: a switch (``True``/``False`` or ``"true"``/``"false"``): when false the network is returned
            unchanged, so a bundle config can write ``convert_to_auxiliary_bn(net, @auxiliary_bn)``.

    Returns:
        ``network`` itself, converted.

    Raises:
        ValueError: when ``enabled`` and ``network`` has no batch-norm layer (an auxiliary batch norm of nothing
            would silently train the plain recipe under another name), naming the network's class.
    """
    from monai_advseg.engines.flags import as_flag

    if not as_flag(enabled, "auxiliary_bn"):
        return network
    # the twins of layers converted earlier are batch norms too, but never get twins of their own
    twins = {id(getattr(m, TWIN)) for m in network.modules() if isinstance(m, _WithAuxiliaryBatchNorm)}
    layers = [m for m in network.modules() if isinstance(m, _BatchNorm) and id(m) not in twins]
    if not layers:
        raise ValueError(
            f"auxiliary batch norm needs batch-norm layers, but {type(network).__name__} has none (it uses "
            "instance/group/layer norm or no norm); train it with auxiliary_bn=false"
        )
    for layer in layers:
        if isinstance(layer, _WithAuxiliaryBatchNorm):
            continue
        twin = copy.deepcopy(layer)
        layer.__class__ = _converted_class(type(layer))
        layer.use_auxiliary = False
        layer.add_module(TWIN, twin)
        layer.register_state_dict_post_hook(_strip_twin)
        layer.register_load_state_dict_post_hook(_ignore_missing_twin)
    return network


def _root(network: nn.Module) -> nn.Module:
    """The network inside DDP / DataParallel / ``torch.compile`` wrappers, so that names do not depend on them."""
    while True:
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            network = network.module
        elif hasattr(network, "_orig_mod") and isinstance(network._orig_mod, nn.Module):
            network = network._orig_mod
        else:
            return network


def auxiliary_bn_layers(network: nn.Module) -> dict[str, nn.Module]:
    """The converted layers of ``network`` by module name (inside any DDP / compile wrapper); empty if none."""
    return {name: m for name, m in _root(network).named_modules() if isinstance(m, _WithAuxiliaryBatchNorm)}


def has_auxiliary_bn(network: nn.Module) -> bool:
    """Whether ``network`` (or the module inside its DDP / compile wrapper) has been converted."""
    return bool(auxiliary_bn_layers(network))


@contextmanager
def auxiliary_bn(network: nn.Module, active: bool = True) -> Iterator[nn.Module]:
    """Route every converted batch-norm layer of ``network`` through its twin while the context is open.

    Args:
        network: a network converted with :func:`convert_to_auxiliary_bn` (or a DDP / compiled wrapper of one).
        active: when False the context does nothing (the main batch norm stays in use).

    Yields:
        ``network``.

    Raises:
        ValueError: when ``active`` and the network has no converted layer.
    """
    layers = list(auxiliary_bn_layers(network).values())
    if active and not layers:
        raise ValueError(
            f"{type(network).__name__} has no auxiliary batch norm: convert it with "
            "monai_advseg.networks.convert_to_auxiliary_bn first"
        )
    previous = [layer.use_auxiliary for layer in layers]
    try:
        if active:
            for layer in layers:
                layer.use_auxiliary = True
        yield network
    finally:
        for layer, value in zip(layers, previous, strict=True):
            layer.use_auxiliary = value


class AuxiliaryBatchNormState:
    """The twins' state (affine parameters and running statistics) as a checkpoint object, for resuming training.

    The network's own ``state_dict`` leaves the twins out (so that ``model.pt`` is the plain network); put this
    object next to it in a resume checkpoint's ``save_dict`` / ``load_dict``. For a network without twins the state
    is empty, so the same bundle config serves ``auxiliary_bn`` true and false.

    Args:
        network: the (converted or plain) network, or a DDP / compiled wrapper of it.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: getattr(layer, TWIN).state_dict() for name, layer in auxiliary_bn_layers(self.network).items()}

    def load_state_dict(self, state_dict: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load the twins; the saved layers must be exactly this network's converted layers.

        Raises:
            ValueError: when the names differ (a checkpoint of another network, or with/without ``auxiliary_bn``).
        """
        layers = auxiliary_bn_layers(self.network)
        if set(state_dict) != set(layers):
            missing, unexpected = sorted(set(layers) - set(state_dict)), sorted(set(state_dict) - set(layers))
            raise ValueError(
                "auxiliary batch-norm state does not match the network: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} "
                "(was the checkpoint trained with another auxiliary_bn setting?)"
            )
        for name, layer in layers.items():
            getattr(layer, TWIN).load_state_dict(state_dict[name])
