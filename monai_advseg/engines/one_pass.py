"""The part the robustness and the certification evaluators share: a MONAI ``SupervisedEvaluator`` that makes one
pass over the data to collect per-case arrays for a report."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import default_prepare_batch
from monai.inferers import Inferer, SimpleInferer
from torch import nn

from monai_advseg.attacks.gradient import unwrap_ddp
from monai_advseg.handlers.safe_load import load_network_weights
from monai_advseg.inferers import InferredNetwork

__all__ = ["OnePassEvaluator"]


class OnePassEvaluator(SupervisedEvaluator):
    """A ``SupervisedEvaluator`` over undecollated batches whose network can be loaded from a checkpoint first.

    The base of :class:`~monai_advseg.engines.RobustnessEvaluator` and
    :class:`~monai_advseg.engines.CertificationEvaluator`: they attach their bookkeeping, then their handlers and
    ``val_handlers`` (:meth:`attach_handlers`), and read each batch with :meth:`image_and_label`.

    Args:
        device: device to run on.
        val_data_loader: the evaluation data (image and label; one pass).
        network: the network, returning logits ``(B, C, *spatial)`` in eval mode.
        inferer: MONAI inferer; None: ``SimpleInferer()``.
        prepare_batch: as in MONAI's ``SupervisedEvaluator``.
        checkpoint: optional weights file loaded with :func:`~monai_advseg.handlers.load_network_weights`.
        epoch_length, non_blocking, to_kwargs: as in MONAI's ``SupervisedEvaluator``.

    Raises:
        ValueError: on a checkpoint that does not fit the network.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: nn.Module,
        inferer: Inferer | None = None,
        prepare_batch: Callable = default_prepare_batch,
        checkpoint: str | Path | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        to_kwargs: dict | None = None,
    ) -> None:
        if checkpoint is not None:
            load_network_weights(network, checkpoint)
        super().__init__(
            device=torch.device(device) if isinstance(device, str) else device,
            val_data_loader=val_data_loader,
            network=network,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            inferer=SimpleInferer() if inferer is None else inferer,
            decollate=False,
            to_kwargs=to_kwargs,
        )

    def attach_handlers(self, handlers: Sequence[Any], val_handlers: Sequence | None = None) -> None:
        """Attach ``handlers`` in order (each with ``attach(engine)``; None entries skipped), then the user's
        ``val_handlers``, so that theirs see what ours put in ``engine.state``."""
        for handler in handlers:
            if handler is not None:
                handler.attach(self)
        if val_handlers is not None:
            self._register_handlers(val_handlers)

    def inferred(self, network: nn.Module | None = None, streamed: bool = True) -> InferredNetwork:
        """``network`` (default: the evaluator's, unwrapped from DDP) behind the evaluator's inferer, as one module."""
        return InferredNetwork(unwrap_ddp(self.network if network is None else network), self.inferer, streamed)

    def image_and_label(self, batchdata: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's images and labels on the engine's device (its ``prepare_batch``).

        Raises:
            ValueError: when there is no batch.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        prepared = self.prepare_batch(batchdata, self.state.device, self.non_blocking, **self.to_kwargs)
        return prepared[0], prepared[1]

    def network_config(self) -> dict[str, str]:
        """The report's ``config`` entries naming the network (unwrapped from DDP) and the inferer."""
        return {"network": type(unwrap_ddp(self.network)).__name__, "inferer": type(self.inferer).__name__}
