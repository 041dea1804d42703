"""Checkpoint loading that refuses pickled Python objects with a clear error naming the file.

``torch.load(..., weights_only=True)`` refuses a file holding pickled objects (``torch.save(model)``, or any object
with a ``__reduce__`` payload) with ``pickle.UnpicklingError: Weights only load failed ...``, which does not name the
file and suggests re-running with ``weights_only=False``, the unsafe option. :func:`load_weights_only` and
:class:`WeightsOnlyCheckpointLoader` raise a ``ValueError`` naming the file and the refused object instead.

This module imports nothing else of ours, so both ``monai_advseg.handlers`` and ``monai_advseg.engines`` can use it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

__all__ = ["WeightsOnlyCheckpointLoader", "load_weights_only", "pickled_checkpoint_error"]

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
