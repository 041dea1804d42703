"""An output folder that a run fills completely or not at all: files go to a hidden staging sibling first.

Bundles use it as::

    "output": {"_target_": "monai_advseg.data.StagedOutputFolder", "output_dir": "@output_dir", "overwrite": false},
    "run": ["$@output.run(@evaluator.run)"]

with every writer pointed at ``$@output.staging_dir``. If the run raises (or is interrupted), the staging folder and
everything in it are removed and ``output_dir`` is left as it was: not created, or with its earlier files unchanged.
Only a process killed outright (SIGKILL, power loss) can leave a ``.<name>.partial-*`` folder next to ``output_dir``.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["StagedOutputFolder"]

logger = logging.getLogger(__name__)


class StagedOutputFolder:
    """A run's output folder, written through a staging folder next to it and published when the run succeeds.

    Args:
        output_dir: the folder the results belong in.
        overwrite: accept an existing ``output_dir``; the run's files then replace same-named files in it (other
            files stay). Without it an existing ``output_dir`` is an error, raised before anything is written.

    Attributes:
        path: ``output_dir``.
        staging_dir: ``<parent>/.<name>.partial-<pid>-<random>``, the folder writers write to (created by
            :meth:`run`, same file system as ``output_dir`` so that publishing is a rename).
    """

    def __init__(self, output_dir: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(output_dir).absolute()
        self.overwrite = bool(overwrite)
        self.staging_dir = str(self.path.parent / f".{self.path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self._created_parents: list[Path] = []

    def check(self) -> None:
        """Raise ``FileExistsError`` if ``output_dir`` exists and ``overwrite`` is off (or it is not a folder)."""
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"{self.path}: output path exists and is not a folder")
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(
                f"{self.path}: output folder exists; pass overwrite=True (bundles: --overwrite true) to write into it"
            )

    def _make_staging(self) -> None:
        missing = []
        for parent in (self.path.parent, *self.path.parent.parents):
            if parent.exists():
                break
            missing.append(parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._created_parents = missing  # innermost first: removed in this order on failure
        os.mkdir(self.staging_dir)

    def discard(self) -> None:
        """Remove the staging folder and any parent folders :meth:`run` created (if still empty)."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        for parent in self._created_parents:
            try:
                parent.rmdir()
            except OSError:
                break

    def publish(self) -> None:
        """Move the staged files into ``output_dir`` (a rename of the folder if ``output_dir`` does not exist)."""
        staging = Path(self.staging_dir)
        names = sorted(item.name for item in staging.iterdir())
        if not self.path.exists():
            os.rename(staging, self.path)
        else:
            self.check()  # it may have appeared during the run
            for item in sorted(staging.iterdir()):
                target = self.path / item.name
                if target.is_dir() and not item.is_dir():
                    raise IsADirectoryError(f"{target}: a folder is in the way of the output file {item.name}")
                if item.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                os.replace(item, target)
            staging.rmdir()
        self._created_parents = []
        logger.info("wrote %d output(s) to %s: %s", len(names), self.path, ", ".join(names))

    def run(self, fn: Callable[[], Any]) -> Any:
        """Check ``output_dir``, create the staging folder, call ``fn`` and publish; on any error remove the staging
        folder (and parents created for it) and re-raise.

        Args:
            fn: the work that writes into :attr:`staging_dir`, e.g. an evaluator's ``run``.

        Returns:
            what ``fn`` returns.
        """
        self.check()
        self._make_staging()
        try:
            result = fn()
            self.publish()
        except BaseException:
            self.discard()
            raise
        return result
