"""Crash-safe checkpoints and resumable training for MONAI workflows.

- :class:`AtomicCheckpointSaver`: MONAI's ``CheckpointSaver`` writing every file through a temporary file in the same
  folder and ``os.replace``, so an interrupted or failing save never leaves a truncated checkpoint, and a fixed file
  name (``model.pt``) is replaced in one step instead of being deleted before the new file is written.
- :class:`RandomState` and :class:`BestMetricState`: ``state_dict`` / ``load_state_dict`` views of the random
  generators and of an evaluator's best metric, so they can be saved with the network, optimizer and trainer state and
  loaded back with ``torch.load(..., weights_only=True)`` (tensors, numbers, strings and containers only).
- :func:`attach_resume`: attach a ``CheckpointLoader`` to a trainer when resuming is requested.
- :func:`save_atomically`: ``torch.save`` through the same temporary file + ``os.replace`` (scripts, benchmarks).
- :func:`check_checkpoint_files`: refuse to start a fresh training run over existing checkpoints unless asked to.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from monai_advseg.engines.flags import as_flag

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "BestMetricState",
    "RandomState",
    "attach_resume",
    "check_checkpoint_files",
    "save_atomically",
]

_CHECKPOINTS = ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint")


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` with ``atomic=True`` (temporary file + ``os.replace``) and an optional fixed file name.

    ignite removes a checkpoint that drops out of the ``n_saved`` window *before* writing the new one. With a fixed
    file name both are the same file, so removal is skipped: the atomic replace swaps the old file for the new one,
    and the previous checkpoint survives a save that fails or is killed. ignite's atomic save adds group / other read
    permission after the replace, so the file mode matches a plain ``torch.save``.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False, **kwargs)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


def save_atomically(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` written atomically (see :class:`AtomicDiskSaver`), creating the folder if needed.

    A save that fails or is killed leaves the earlier file at ``path`` (if any) whole and no partial file. Under
    ``torch.distributed`` only rank 0 writes. Returns ``path``.
    """
    path = Path(path)
    AtomicDiskSaver(path.parent, path.name)(obj, path.name)
    return path


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` whose files are written atomically (see :class:`AtomicDiskSaver`).

    Same arguments as MONAI's ``CheckpointSaver``, plus:

    Args:
        interval_filename: a fixed file name for the ``save_interval`` checkpoints (e.g. ``"checkpoint.pt"``, the
            resume file), replaced at every save; None keeps MONAI's ``<prefix>_checkpoint_<unit>=<n>.pt`` names.

    Under ``torch.distributed`` only rank 0 writes (ignite's ``DiskSaver``). A ``DistributedDataParallel`` network in
    ``save_dict`` is saved unwrapped (no ``module.`` prefix; ignite's ``Checkpoint`` does this).
    """

    def __init__(self, *args: Any, interval_filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for attribute in _CHECKPOINTS:
            checkpoint = getattr(self, attribute)
            if checkpoint is None:
                continue
            filename = getattr(checkpoint.save_handler, "filename", None)
            if attribute == "_interval_checkpoint" and interval_filename is not None:
                filename = interval_filename
            checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename)

    def state_dict(self) -> dict:
        """The key-metric tracking list (what ``load_state_dict`` restores), so resuming keeps the best model."""
        if self._key_metric_checkpoint is None:
            return {}
        return self._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            super().load_state_dict(state_dict)


class RandomState:
    """The torch (CPU and CUDA), numpy and Python random generators as a ``weights_only``-loadable state dict.

    Put an instance in a checkpoint's ``save_dict`` / ``load_dict``: a resumed run then draws the same data order
    and random transforms as the uninterrupted one (for checkpoints taken at epoch boundaries).
    """

    def state_dict(self) -> dict:
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": {
                "name": str(name),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "position": int(position),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            },
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        saved = state["numpy"]
        np.random.set_state(
            (
                saved["name"],
                saved["keys"].numpy().astype(np.uint32),
                saved["position"],
                saved["has_gauss"],
                saved["cached_gaussian"],
            )
        )
        python = state["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))


class BestMetricState:
    """``state_dict`` / ``load_state_dict`` of an evaluator's ``best_metric`` and ``best_metric_epoch``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict:
        state = self.engine.state
        return {
            "best_metric": float(getattr(state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
        }

    def load_state_dict(self, state: dict) -> None:
        self.engine.state.best_metric = state["best_metric"]
        self.engine.state.best_metric_epoch = state["best_metric_epoch"]


def attach_resume(loader: CheckpointLoader, engine: Engine, resume: bool | str) -> bool:
    """Attach ``loader`` to ``engine`` (it loads when the run starts) if resuming is requested.

    Args:
        loader: a ``CheckpointLoader``, e.g. :class:`WeightsOnlyCheckpointLoader` (refuses pickled objects clearly).
        engine: the trainer.
        resume: ``true`` (the checkpoint must exist), ``false``, or ``"auto"`` (resume when the file exists, else
            start from scratch: suits jobs restarted by a scheduler).

    Returns:
        Whether the loader was attached.

    Raises:
        FileNotFoundError: when ``resume`` is true and the checkpoint does not exist.
        ValueError: on any other ``resume`` value.
    """
    auto = isinstance(resume, str) and resume.strip().lower() == "auto"
    path = Path(loader.load_path)
    if not auto and not as_flag(resume, "resume"):
        return False
    if not path.is_file():
        if auto:
            logging.getLogger(__name__).info(f"resume=auto: no checkpoint at {path}, training from scratch")
            return False
        raise FileNotFoundError(f"resume requested but no checkpoint at {path} (train once first, or use resume=auto)")
    loader.attach(engine)
    return True


def _is_auto(resume: bool | str) -> bool:
    return isinstance(resume, str) and resume.strip().lower() == "auto"


def check_checkpoint_files(
    resume_path: str | Path,
    other_paths: Sequence[str | Path] = (),
    resume: bool | str = False,
    overwrite: bool | str = False,
) -> list[Path]:
    """Refuse to start a fresh training run over the checkpoints of an earlier one, unless asked to.

    Call it before training (a bundle's ``initialize``): a fresh run (not resuming) would replace ``resume_path``
    (``checkpoint.pt``) and ``other_paths`` (``model.pt``) as it saves, silently losing the earlier run.

    Args:
        resume_path: the resume checkpoint the run writes and ``resume`` reads.
        other_paths: further files the run writes (the best model).
        resume: ``true`` / ``"auto"`` continue from ``resume_path`` (``"auto"`` only when it exists), so nothing is
            refused; ``false`` starts fresh.
        overwrite: let a fresh run replace the existing files (each is replaced when the run first saves it; until
            then the earlier file stays).

    Returns:
        The existing files a fresh run will replace (empty when resuming or when there are none).

    Raises:
        FileExistsError: a fresh run without ``overwrite`` over existing files; the message names them.
        ValueError: ``overwrite`` together with ``resume`` (``true`` or ``"auto"``), or a value that is not a switch.
    """
    resume_path = Path(resume_path)
    replace = as_flag(overwrite, "overwrite")
    auto = _is_auto(resume)
    if auto or as_flag(resume, "resume"):
        if replace:
            raise ValueError(
                f"resume={resume!r} and overwrite=true contradict each other: pass --resume to continue from "
                f"{resume_path}, or --overwrite true to start afresh and replace it"
            )
        if not auto or resume_path.is_file():
            return []
    existing = [path for path in (resume_path, *map(Path, other_paths)) if path.exists()]
    if existing and not replace:
        names = ", ".join(str(path) for path in existing)
        if resume_path.is_file():
            choice = f"pass --resume true to continue training from {resume_path}, or --overwrite true to replace them"
        else:
            choice = f"pass --overwrite true to replace them (--resume true needs {resume_path}, which does not exist)"
        raise FileExistsError(
            f"a fresh training run would replace the existing checkpoint(s) {names}; {choice} "
            "(or choose another --ckpt_dir)"
        )
    if existing:
        logging.getLogger(__name__).warning(
            "overwrite=true: this run replaces %s as it saves", ", ".join(str(path) for path in existing)
        )
    return existing
