"""Checkpoint loading that refuses pickled Python objects with a clear error naming the file.

``torch.load(..., weights_only=True)`` refuses a file holding pickled objects (``torch.save(model)``, or any object
with a ``__reduce__`` payload) with ``pickle.UnpicklingError: Weights only load failed ...``, which does not name the
file and suggests re-running with ``weights_only=False``, the unsafe option. :func:`load_weights_only` and
:class:`WeightsOnlyCheckpointLoader` raise a ``ValueError`` naming the file and the refused object instead.

:func:`load_network_weights` loads such a checkpoint strictly into a network, naming the keys that do not fit.

This module imports only the attack core's DDP unwrap, so both ``monai_advseg.handlers`` and ``monai_advseg.engines``
can use it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from torch import nn

from monai_advseg.attacks.gradient import unwrap_ddp

__all__ = ["WeightsOnlyCheckpointLoader", "load_network_weights", "load_weights_only", "pickled_checkpoint_error"]

_STATE_DICT_KEYS = ("network", "model", "state_dict")

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def pickled_checkpoint_error(path: str | Path, error: BaseException) -> ValueError:
    """The ``ValueError`` for a checkpoint that ``torch.load(..., weights_only=True)`` refused with ``error``.

    The message names the file and, when torch reports it, the refused object (e.g. ``posix.system``).
    """
    found = _GLOBAL.search(str(error))
    what = f" (found {found.group(1)})" if found else ""
    return ValueError(
        f"refusing to load {path}: it contains pickled Python objects{what}, which could run arbitrary code "
        "(weights_only=True failed). Save only state dicts, e.g. torch.save(network.state_dict(), path), or "
        "the checkpoints the bundles' AtomicCheckpointSaver writes."
    )


def load_weights_only(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load(path, map_location=map_location, weights_only=True)``, refusing pickled objects clearly.

    Raises:
        ValueError: when the file holds pickled Python objects; the message names the file (see
            :func:`pickled_checkpoint_error`).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # ``from None``: torch's message advises weights_only=False; it stays reachable as ``__context__``.
        raise pickled_checkpoint_error(path, error) from None


class WeightsOnlyCheckpointLoader(CheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` that refuses a checkpoint holding pickled objects with a clear error.

    Same arguments and behaviour as MONAI's ``CheckpointLoader`` (which loads with ``weights_only=True``), except that
    a file carrying pickled Python objects raises ``ValueError`` naming the file (see
    :func:`pickled_checkpoint_error`) instead of torch's ``UnpicklingError``, which names no file and advises
    ``weights_only=False``.
    """

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except pickle.UnpicklingError as error:  # only torch.load(..., weights_only=True) raises it here
            raise pickled_checkpoint_error(self.load_path, error) from None


def load_network_weights(network: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``network`` safely (``weights_only=True``) and strictly.

    Accepts a raw state dict or a dict holding it under ``"network"``, ``"model"`` or ``"state_dict"`` (what MONAI's
    ``CheckpointSaver`` writes, e.g. ``{"network": state_dict}``). A ``"module."`` prefix left by
    ``DistributedDataParallel`` is removed when the network has none.

    Args:
        network: the module to fill (a ``DistributedDataParallel`` wrapper is unwrapped).
        path: the checkpoint file.

    Returns:
        ``network``, with the weights loaded.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file holds pickled Python objects (e.g. ``torch.save(model)``), holds no state dict,
            or its keys / shapes do not match the network (the message names the file and the keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = load_weights_only(path, map_location="cpu")
    state = checkpoint
    if isinstance(checkpoint, dict):
        for key in _STATE_DICT_KEYS:
            if key in checkpoint and isinstance(checkpoint[key], dict):
                state = checkpoint[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} holds no state dict: expected a dict of tensors or one under {list(_STATE_DICT_KEYS)}, "
            f"found keys {sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__}"
        )
    module = unwrap_ddp(network)
    expected = module.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in expected):
        state = {k[len("module.") :]: v for k, v in state.items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:

        def _head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")

        problems = [
            f"{name} keys: {_head(items)}"
            for name, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
            if items
        ]
        raise ValueError(
            f"checkpoint {path} does not match the network {type(module).__name__}: " + "; ".join(problems)
        )
    module.load_state_dict(state, strict=True)
    return network
