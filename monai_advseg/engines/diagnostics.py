"""Gradient-masking diagnostics collected beside a robustness sweep (the scores; the judging is pure, in handlers).

:class:`GradientMaskingDiagnostics` is a component of :class:`~monai_advseg.engines.RobustnessEvaluator`: per batch
it scores the model under the evaluator's own attack at eps = the whole intensity range, under uniform noise and
under images attacked through a surrogate network at every eps of the sweep, and under a score-based random search
on the first few cases. All attacks come from :mod:`monai_advseg.attacks`; the evaluator's scorer does the scoring.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events
from torch import nn

from monai_advseg.attacks.gradient import network_logits, plain_copy
from monai_advseg.attacks.specs import AttackSpec, NoiseSpec, RandomSearchSpec, build_attack_spec
from monai_advseg.handlers.diagnostics import build_diagnostics
from monai_advseg.handlers.safe_load import load_network_weights

if TYPE_CHECKING:
    from monai_advseg.engines.robustness import RobustnessEvaluator

__all__ = ["FULL_RANGE_LEVELS", "GradientMaskingDiagnostics"]

#: eps of the unbounded check: the whole intensity range, in 0..255 levels.
FULL_RANGE_LEVELS = 255.0


class GradientMaskingDiagnostics:
    """Scores for the five diagnostics of :func:`~monai_advseg.handlers.diagnostics.build_diagnostics`.

    Args:
        surrogate: a network with the model's input and output shapes for the transfer check (e.g. a plain U-Net),
            or None to skip it (recorded with the reason).
        surrogate_checkpoint: weights for ``surrogate`` (:func:`~monai_advseg.handlers.load_network_weights`).
        transfer_attack: the attack run on the surrogate; None = the evaluator's own attack.
        unbounded: run the eps = 255 levels check (one more attack per case).
        noise: run the uniform-noise check.
        black_box_cases: the random search runs on the first this many cases (0 skips it).
        black_box_queries: forwards per case and eps of the random search.
        black_box_levels: the strengths of the random search; None = the sweep's largest.
        tolerance: Dice by which a reference may beat the attack before a check fails.
        unbounded_threshold: the highest mean Dice allowed at eps = the whole range.

    Raises:
        ValueError: on a negative case count, a bad tolerance, or a checkpoint that does not fit the surrogate.
    """

    def __init__(
        self,
        surrogate: nn.Module | None = None,
        surrogate_checkpoint: str | Path | None = None,
        transfer_attack: str | AttackSpec | None = None,
        unbounded: bool = True,
        noise: bool = True,
        black_box_cases: int = 4,
        black_box_queries: int = 300,
        black_box_levels: Sequence[float] | None = None,
        tolerance: float = 0.02,
        unbounded_threshold: float = 0.05,
    ) -> None:
        if isinstance(black_box_cases, bool) or not isinstance(black_box_cases, int) or black_box_cases < 0:
            raise ValueError(f"black_box_cases must be an int >= 0, got {black_box_cases!r}")
        if not 0 <= float(tolerance) <= 1:
            raise ValueError(f"tolerance must be in [0, 1] (Dice), got {tolerance!r}")
        if surrogate is not None and surrogate_checkpoint is not None:
            load_network_weights(surrogate, surrogate_checkpoint)
        self.surrogate = surrogate
        self.surrogate_checkpoint = None if surrogate_checkpoint is None else str(surrogate_checkpoint)
        self.transfer_attack = None if transfer_attack is None else build_attack_spec(transfer_attack)
        self.unbounded = bool(unbounded)
        self.noise = bool(noise)
        self.black_box_cases = black_box_cases
        self.black_box = RandomSearchSpec(queries=black_box_queries)
        self.black_box_levels = None if black_box_levels is None else [float(e) for e in black_box_levels]
        self.tolerance = float(tolerance)
        self.unbounded_threshold = float(unbounded_threshold)
        self.reset()

    def attach(self, evaluator: RobustnessEvaluator) -> None:
        """Collect beside ``evaluator``'s sweep: reset at each run, check the surrogate on the first batch (before
        any attack), score every batch under the references once the evaluator's own attack has run on it."""
        evaluator.add_event_handler(Events.EPOCH_STARTED, lambda engine: self.reset())
        evaluator.add_event_handler(Events.ITERATION_STARTED, self._check_first_batch)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._collect_batch)

    def reset(self) -> None:
        """Forget the collected scores (at the start of every run)."""
        self._parts: dict[str, list[torch.Tensor]] = {"unbounded": [], "noise": [], "transfer": [], "black_box": []}
        self._black_box_rows: list[int] = []
        self._seen = 0
        self._seen_cases = 0
        self.seconds = 0.0

    def _check_first_batch(self, evaluator: RobustnessEvaluator) -> None:
        if self.surrogate is None or self._seen_cases:
            return
        image = evaluator.prepare_batch(
            evaluator.state.batch, evaluator.state.device, evaluator.non_blocking, **evaluator.to_kwargs
        )[0]
        self.check_surrogate(evaluator.predict_logits(image[:1]), image)

    def _collect_batch(self, evaluator: RobustnessEvaluator) -> None:
        output = evaluator.state.output
        began = time.perf_counter()
        num_classes = max(2, output["pred"].shape[1])
        self.collect(evaluator, output["image"], output["label"], num_classes, evaluator.generator)
        self.seconds += time.perf_counter() - began

    def check_levels(self, epsilon_levels: Sequence[float]) -> list[float]:
        """The random search's strengths, each one of the sweep's.

        Raises:
            ValueError: naming a black-box strength that the sweep does not have.
        """
        levels = [max(epsilon_levels)] if self.black_box_levels is None else self.black_box_levels
        missing = [e for e in levels if e not in [float(v) for v in epsilon_levels]]
        if missing:
            raise ValueError(f"black_box_levels {missing} are not strengths of the sweep {list(epsilon_levels)}")
        return levels

    def check_surrogate(self, model_logits: torch.Tensor, image: torch.Tensor) -> None:
        """Raise before any attack when the surrogate's output shape differs from the model's.

        Raises:
            ValueError: naming both shapes.
        """
        if self.surrogate is None:
            return
        self.surrogate.to(image.device).eval()
        with torch.no_grad():
            shape = tuple(network_logits(self.surrogate(plain_copy(image[:1]))).shape[1:])
        if shape != tuple(model_logits.shape[1:]):
            raise ValueError(
                f"surrogate output shape {shape} (per case) differs from the model's {tuple(model_logits.shape[1:])}; "
                "the transfer check needs a surrogate with the same classes and spatial size"
            )

    def collect(
        self,
        evaluator: RobustnessEvaluator,
        image: torch.Tensor,
        label: torch.Tensor,
        num_classes: int,
        generator: torch.Generator | None,
    ) -> None:
        """Score one batch under the references (the evaluator's attack already ran on it)."""
        levels = evaluator.epsilon_levels
        if self.unbounded:
            unbounded = evaluator.attack_sweep(image, label, num_classes, generator, levels=[FULL_RANGE_LEVELS])
            self._parts["unbounded"].append(dice_of(evaluator, unbounded, label, num_classes)[:, 0])
        if self.noise:
            noise = evaluator.attack_sweep(image, label, num_classes, generator, spec=NoiseSpec())
            self._parts["noise"].append(dice_of(evaluator, noise, label, num_classes))
        if self.surrogate is not None:
            transferred = evaluator.attack_sweep(
                image, label, num_classes, generator, spec=self.transfer_attack, network=self.surrogate
            )
            self._parts["transfer"].append(dice_of(evaluator, transferred, label, num_classes))
        take = min(image.shape[0], self.black_box_cases - self._seen) if self.black_box_cases else 0
        if take > 0:
            found = evaluator.attack_sweep(
                image[:take],
                label[:take],
                num_classes,
                generator,
                spec=self.black_box,
                levels=self.check_levels(levels),
            )
            self._parts["black_box"].append(dice_of(evaluator, found, label[:take], num_classes))
            self._black_box_rows.extend(range(self._seen_cases, self._seen_cases + take))
            self._seen += take
        self._seen_cases += image.shape[0]

    def report(
        self, evaluator: RobustnessEvaluator, clean_dice: torch.Tensor, attack_dice: torch.Tensor
    ) -> dict[str, dict[str, Any]]:
        """The diagnostics block of the report, from the run's scores.

        Args:
            evaluator: the evaluator that ran the sweep.
            clean_dice: ``(N,)`` clean Dice.
            attack_dice: ``(N, E)`` Dice under its attack.
        """
        parts = {k: torch.cat(v).numpy() if v else None for k, v in self._parts.items()}
        skipped = {}
        if self.surrogate is None:
            skipped["transfer"] = "no surrogate network given (GradientMaskingDiagnostics(surrogate=...))"
        if not self.unbounded:
            skipped["unbounded"] = "unbounded=False"
        if not self.noise:
            skipped["noise"] = "noise=False"
        if not self.black_box_cases:
            skipped["black_box"] = "black_box_cases=0"
        transfer = self.transfer_attack or evaluator.attack_spec
        details = {
            "unbounded": {"attack": evaluator.attack},
            "noise": {"draws": 1, "distribution": "uniform in the eps ball, clipped to the intensity range"},
            "transfer": {
                "surrogate": None if self.surrogate is None else type(self.surrogate).__name__,
                "surrogate_checkpoint": self.surrogate_checkpoint,
                "attack": transfer.name,
            },
            "black_box": {"queries": self.black_box.queries, "method": "Square-attack-style random search"},
        }
        return build_diagnostics(
            evaluator.epsilon_levels,
            clean_dice.numpy(),
            attack_dice.numpy(),
            unbounded_dice=parts["unbounded"],
            noise_dice=parts["noise"],
            transfer_dice=parts["transfer"],
            black_box_dice=parts["black_box"],
            black_box_cases=self._black_box_rows,
            black_box_levels=self.check_levels(evaluator.epsilon_levels),
            skipped=skipped,
            tolerance=self.tolerance,
            unbounded_threshold=self.unbounded_threshold,
            details=details,
        )


def dice_of(evaluator: RobustnessEvaluator, adversarial: torch.Tensor, label: torch.Tensor, num_classes: int):
    """``(E, B, ...)`` adversarial images -> ``(B, E)`` Dice of the evaluator's model."""
    return torch.stack(
        [evaluator.scores(evaluator.predict_logits(a), label, num_classes)["dice"] for a in adversarial], dim=1
    )
