"""The NLCE paper's robustness protocol as a MONAI workflow: clean and attacked Dice / Jaccard over an epsilon sweep.

:class:`RobustnessEvaluator` iterates the data loader once. For every batch it scores the clean images, then hands
the batch and every strength of the sweep to its attack component (:mod:`monai_advseg.attacks.specs`), which attacks
them through the attack core, and scores the adversarial images. The engine only collects per-case arrays; the report
is built by :func:`~monai_advseg.handlers.robustness_report.build_robustness_report` and written by
:class:`~monai_advseg.handlers.robustness_report.RobustnessReportWriter`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.engines.utils import default_prepare_batch
from monai.inferers import Inferer
from torch import nn

from monai_advseg.attacks import PAPER_EPSILON_LEVELS, levels_to_epsilon
from monai_advseg.attacks.gradient import eval_modes, forward_in_chunks, plain_copy
from monai_advseg.attacks.specs import ATTACK_SPECS, AttackSpec, build_attack_spec
from monai_advseg.attacks.validation import check_max_batch
from monai_advseg.data import InputError
from monai_advseg.engines.diagnostics import FULL_RANGE_LEVELS, GradientMaskingDiagnostics
from monai_advseg.engines.one_pass import OnePassEvaluator
from monai_advseg.engines.scoring import MultiLabelScorer, SegmentationScorer
from monai_advseg.engines.sweep_records import SweepRecords, case_ids, no_foreground
from monai_advseg.handlers.robustness_gallery import GALLERY_CASES, RobustnessGalleryCollector, gallery_levels
from monai_advseg.handlers.robustness_report import (
    RobustnessReportWriter,
    build_robustness_report,
    state_metrics,
)
from monai_advseg.handlers.safe_load import load_network_weights
from monai_advseg.handlers.sweep_progress import SweepProgressBar

__all__ = ["ATTACKS", "GALLERY_CASES", "RobustnessEvaluator", "gallery_levels", "load_network_weights"]

#: Attack names accepted by :class:`RobustnessEvaluator` (the registry :data:`~monai_advseg.attacks.ATTACK_SPECS`).
ATTACKS: tuple[str, ...] = tuple(ATTACK_SPECS)


def _check_epsilons(epsilons: Sequence[float]) -> list[float]:
    try:
        values = [float(e) for e in epsilons]
    except (TypeError, ValueError) as error:
        raise ValueError(f"epsilons must be a sequence of numbers (0..255 levels), got {epsilons!r}") from error
    if not values:
        raise ValueError("epsilons must not be empty: give at least one attack strength in 0..255 levels")
    bad = [e for e in values if not math.isfinite(e) or e < 0]
    if bad:
        raise ValueError(f"epsilons must be finite and >= 0 (0..255 levels), got {bad} in {list(epsilons)}")
    beyond = [e for e in values if e > FULL_RANGE_LEVELS]
    if beyond:  # a ball wider than the whole intensity range only repeats the clipping; surely a unit mistake
        raise ValueError(
            f"epsilons {beyond} exceed the whole intensity range ({FULL_RANGE_LEVELS:g} levels of intensity_range); "
            "give 0..255 levels, not input units"
        )
    if len(set(values)) != len(values):
        raise ValueError(f"epsilons must not repeat a strength, got {list(epsilons)}")
    return sorted(values)


def _check_intensity_range(intensity_range: Sequence[float]) -> tuple[float, float]:
    if len(intensity_range) != 2:
        raise ValueError(f"intensity_range must be (lo, hi), got {intensity_range!r}")
    return float(intensity_range[0]), float(intensity_range[1])


class RobustnessEvaluator(OnePassEvaluator):
    """Clean and adversarial Dice / Jaccard over an epsilon sweep (the NLCE paper's robustness protocol).

    ``run()`` evaluates every batch clean and under the attack at every epsilon. ``self.results`` (also
    ``self.state.robustness``) then holds the report: one row per epsilon after the clean row, per-case values,
    configuration, timings and versions; ``self.state.metrics`` holds ``dice``, ``jaccard`` and ``dice_eps<levels>``,
    ``jaccard_eps<levels>``. With ``output_dir`` the report files are written there (rank 0, all ranks' cases).

    Examples::

        >>> from monai.networks.nets import UNet
        >>> net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
        >>> data = [{"image": torch.rand(2, 1, 16, 16), "label": torch.randint(0, 2, (2, 1, 16, 16))}]
        >>> evaluator = RobustnessEvaluator("cpu", data, net, epsilons=[2, 8], progress=False)
        >>> evaluator.run()
        >>> [row["eps_levels"] for row in evaluator.results["metrics"]]
        [0.0, 2.0, 8.0]

    Args:
        device: device to run on.
        val_data_loader: the evaluation data (image and label; one pass).
        network: the trained network, returning logits ``(B, C, *spatial)`` in eval mode.
        epsilons: attack strengths in 0..255 levels of ``intensity_range`` (any order, no repeats).
        intensity_range: ``(lo, hi)`` of the network input: the unit of a level and the clip range.
        attack: a name of :data:`ATTACKS` (``"ifgsm_targeted"``: the paper's targeted I-FGSM; ``"fgsm"``; ``"pgd"``;
            ``"segpgd"``; ``"worst_case"``; ``"pgd_l2"``, whose levels are L2 radii, see
            :class:`~monai_advseg.attacks.PGDL2Spec`; ...) or an attack component
            (:class:`~monai_advseg.attacks.specs.AttackSpec`), e.g. a bundle's ``_target_``.
        alpha_levels: step size of a named iterative attack, in levels.
        steps: iterations of a named iterative attack; None = the Kurakin schedule ``kurakin_steps(eps / alpha)``.
        max_batch: at most this many samples in one forward (attack and scoring); None = no bound.
        inferer: MONAI inferer, e.g. ``SlidingWindowInferer`` for 3D volumes; the attack differentiates through it.
        streamed_gradient: through a MONAI ``SlidingWindowInferer``, take the attacks' input gradients one window
            at a time (:class:`~monai_advseg.inferers.StreamedSlidingWindowInferer`: same logits, memory of one
            window's graph whatever ``sw_batch_size``); False differentiates MONAI's inferer directly. Scoring always
            uses ``inferer``.
        prepare_batch: as in MONAI's ``SupervisedEvaluator``.
        include_background: score the background class too (False suits binary tasks).
        ignore_empty: passed to ``DiceMetric`` / ``MeanIoU`` (see :class:`~monai_advseg.engines.SegmentationScorer`).
        multi_label: the network's channels are independent sigmoid labels (BraTS-style) and the label is one binary
            channel per output channel: the default scorer is :class:`~monai_advseg.engines.MultiLabelScorer` (each
            channel ``sigmoid >= 0.5``, scored on its own, averaged per case) and a named attack is built with
            ``build_attack_spec(..., multi_label=True)`` (the per-channel binary cross-entropy, each channel's own
            inverse mask; attacks with softmax losses refuse several channels at the first batch). With one channel
            this is the binary sigmoid case (the same scores).
        scorer: ``scorer(logits, label, num_classes) -> {"dice", "jaccard", "foreground"}`` per case ``(B,)``, instead
            of the default scorer (then ``include_background`` / ``ignore_empty`` are unused); a ``no_foreground(label,
            num_classes)`` method, if it has one, says which cases have an empty truth. Ensembles pick their worst case
            by its ``dice``.
        seed: seed of the random attacks' generator, drawn afresh at every run.
        diagnostics: the gradient-masking diagnostics (:class:`~monai_advseg.engines.GradientMaskingDiagnostics`):
            None = when the attack asks for them (the worst case does), True / False = always / never, or a
            configured component (e.g. with a surrogate network).
        output_dir: folder for the report files; None writes none.
        overwrite: replace existing report files in ``output_dir``.
        plot: also write ``robustness.png`` and the example gallery.
        progress: tqdm bar over epsilons x batches; None: on a terminal. The estimated cost is printed to stderr
            before every run either way.
        checkpoint: optional weights file loaded with :func:`load_network_weights`.
        config: extra JSON-serialisable information stored in the report (e.g. bundle name, data split).
        epoch_length, non_blocking, val_handlers, to_kwargs: as in MONAI's ``SupervisedEvaluator``.

    Raises:
        ValueError: on bad epsilons (incl. above 255 levels), an unknown attack or arguments it cannot use, a bad
            ``max_batch`` / ``intensity_range``, a checkpoint that does not fit, or a surrogate whose output shape
            differs from the model's (at the first batch, before any attack); an attack that cannot run on the
            network's channels raises :class:`~monai_advseg.data.InputError` at the first batch.
        FileExistsError: when ``output_dir`` already holds a report and ``overwrite`` is False.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: nn.Module,
        epsilons: Sequence[float] = PAPER_EPSILON_LEVELS,
        intensity_range: Sequence[float] = (0.0, 1.0),
        attack: str | AttackSpec = "ifgsm_targeted",
        alpha_levels: float = 1.0,
        steps: int | None = None,
        max_batch: int | None = None,
        inferer: Inferer | None = None,
        streamed_gradient: bool = True,
        prepare_batch: Callable = default_prepare_batch,
        include_background: bool = False,
        ignore_empty: bool = True,
        multi_label: bool = False,
        scorer: Callable[[torch.Tensor, torch.Tensor, int], dict[str, torch.Tensor]] | None = None,
        seed: int = 0,
        diagnostics: bool | GradientMaskingDiagnostics | None = None,
        output_dir: str | Path | None = None,
        overwrite: bool = False,
        plot: bool = True,
        progress: bool | None = None,
        checkpoint: str | Path | None = None,
        config: dict | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        val_handlers: Sequence | None = None,
        to_kwargs: dict | None = None,
    ) -> None:
        self.epsilon_levels = _check_epsilons(epsilons)
        self.intensity_range = _check_intensity_range(intensity_range)
        self.epsilons = levels_to_epsilon(self.epsilon_levels, self.intensity_range)
        self.multi_label = bool(multi_label)
        self.attack_spec = build_attack_spec(attack, alpha_levels=alpha_levels, steps=steps, multi_label=multi_label)
        self.attack = self.attack_spec.name
        self.max_batch = check_max_batch(max_batch)
        self.include_background = include_background
        self.ignore_empty = ignore_empty
        self.seed = int(seed)
        self.extra_config = dict(config or {})
        self.results: dict[str, Any] | None = None
        self.diagnostics = _diagnostics(diagnostics, self.attack_spec, self.epsilon_levels)
        self.report_writer = None if output_dir is None else RobustnessReportWriter(output_dir, overwrite, plot)
        super().__init__(
            device, val_data_loader, network, inferer, prepare_batch, checkpoint, epoch_length, non_blocking, to_kwargs
        )
        self.attacked = self.inferred(streamed=streamed_gradient)
        self.streamed_gradient = self.attacked.inferer is not self.inferer
        if scorer is None:
            scorer = (
                MultiLabelScorer(ignore_empty)
                if self.multi_label
                else SegmentationScorer(include_background, ignore_empty)
            )
        self.scorer = scorer
        # Our bookkeeping and collectors run before any user handler, so that theirs see the results.
        self.add_event_handler(Events.EPOCH_STARTED, self._start_sweep)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._finish_sweep)
        # the cost is printed before every run; the bar as ``progress`` says
        self.attach_handlers(
            [RobustnessGalleryCollector(), self.diagnostics, SweepProgressBar(progress), self.report_writer],
            val_handlers,
        )

    def step_counts(self) -> list[int]:
        """Gradient steps per epsilon of the sweep, in the order of ``self.epsilon_levels``."""
        return self.attack_spec.step_counts(self.epsilon_levels)

    def attack_sweep(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        num_classes: int,
        generator: torch.Generator | None = None,
        *,
        levels: Sequence[float] | None = None,
        spec: AttackSpec | None = None,
        network: nn.Module | None = None,
    ) -> torch.Tensor:
        """Adversarial images of a batch at every epsilon of the sweep.

        Args:
            image: ``(B, C, *spatial)`` images in input units.
            label: ground truth, class indices ``(B, 1, *spatial)`` or one-hot.
            num_classes: classes including background (2 for a 1-channel sigmoid network).
            generator: random source of a random attack.
            levels: other strengths than the sweep's (the diagnostics' eps = whole range); None = the sweep's.
            spec: another attack component than the evaluator's (the diagnostics' references); None = its own.
            network: attack this network (through the evaluator's inferer) instead of the model, e.g. a surrogate.

        Returns:
            ``(E, B, C, *spatial)``, index ``e`` holding the images attacked at ``levels[e]``.
        """
        spec = self.attack_spec if spec is None else spec
        attacked = self.attacked if network is None else self.inferred(network)
        target = plain_copy(spec.target(label, num_classes))
        extra: dict[str, Any] = {}
        if getattr(spec, "uses_scorer", False):  # e.g. the worst case: it picks by our Dice
            extra = {
                "scorer": _per_step_scorer(self.scorer, num_classes),
                "seed": self.seed,
                "num_classes": num_classes,
            }
        with eval_modes(attacked):
            return spec.sweep(
                attacked,
                plain_copy(image),
                target,
                self.epsilon_levels if levels is None else [float(e) for e in levels],
                intensity_range=self.intensity_range,
                max_batch=self.max_batch,
                generator=generator,
                **extra,
            )

    def scores(self, logits: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
        """Per-case ``{"dice", "jaccard", "foreground"}`` ``(B,)`` of a batch of logits (the evaluator's ``scorer``)."""
        return self.scorer(logits, label, num_classes)

    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """The model's logits of ``image`` through the inferer, in eval mode, without autograd (``max_batch`` per
        forward)."""
        with eval_modes(self.attacked):
            return forward_in_chunks(self.attacked, plain_copy(image), self.max_batch)

    def _iteration(self, engine: RobustnessEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """Evaluate one batch clean and at every epsilon.

        Returns:
            ``{"image", "label", "pred"}`` (clean), ``"adversarial"`` ``(E, B, C, *spatial)``, and ``"dice"``,
            ``"jaccard"``, ``"foreground"`` of shape ``(B, 1 + E)``: column 0 clean, column ``1 + e`` at
            ``epsilon_levels[e]``.
        """
        engine.state.output = None  # the previous batch's adversarial images are not needed while attacking this one
        inputs, targets = self.image_and_label(batchdata)
        records = self._records
        began = time.perf_counter()
        clean_logits = self.predict_logits(inputs)
        try:
            self.attack_spec.check_network(clean_logits.shape[1])
        except ValueError as error:  # the attack does not fit the network: bad input, on one line, before attacking
            raise InputError(str(error)) from None
        num_classes = max(2, clean_logits.shape[1])
        columns = [self.scores(clean_logits, targets, num_classes)]
        records.seconds[0] += time.perf_counter() - began
        began = time.perf_counter()
        adversarial = self.attack_sweep(inputs, targets, num_classes, self.generator)
        records.add_attack_seconds(time.perf_counter() - began, self.step_counts())
        for sweep_index in range(len(self.epsilons)):
            began = time.perf_counter()
            columns.append(self.scores(self.predict_logits(adversarial[sweep_index]), targets, num_classes))
            records.seconds[1 + sweep_index] += time.perf_counter() - began
        output = {key: torch.stack([column[key] for column in columns], dim=1) for key in columns[0]}
        ensemble = getattr(self.attack_spec, "uses_scorer", False)  # an ensemble records its per-case winners
        details = getattr(self.attack_spec, "details", None) if ensemble else None
        records.add(
            case_ids(inputs, len(records.cases), self.state.rank),
            output,
            getattr(self.scorer, "no_foreground", no_foreground)(targets, num_classes),
            details,
        )
        engine.state.output = {"image": inputs, "label": targets, "pred": clean_logits, "adversarial": adversarial}
        engine.state.output.update(output)
        return engine.state.output

    def _start_sweep(self, engine: RobustnessEvaluator) -> None:
        self._records = SweepRecords(len(self.epsilons))
        self._started = time.perf_counter()
        self.generator = torch.Generator().manual_seed(self.seed) if self.attack_spec.random else None

    def _finish_sweep(self, engine: RobustnessEvaluator) -> None:
        diagnostics = None
        if self.diagnostics is not None:  # this rank's cases (under DDP: rank 0's cases go into the report)
            dice = self._records.arrays()["dice"]
            diagnostics = self.diagnostics.report(self, dice[:, 0], dice[:, 1:])
        cases, arrays, seconds, details = self._records.gathered()
        self.results = build_robustness_report(
            cases,
            arrays["dice"].numpy(),
            arrays["jaccard"].numpy(),
            arrays["foreground"].numpy(),
            arrays["empty"].numpy(),
            epsilon_levels=self.epsilon_levels,
            epsilons=self.epsilons,
            steps=self.step_counts(),
            seconds=seconds.tolist(),
            attack=self.attack_spec.describe(self.intensity_range, self.seed),
            config={
                **self.network_config(),
                "streamed_gradient": self.streamed_gradient,
                "intensity_range": list(self.intensity_range),
                "scorer": type(self.scorer).__name__,
                "include_background": self.include_background,
                "multi_label": self.multi_label,
                "ignore_empty": self.ignore_empty,
                "max_batch": self.max_batch,
                **self.extra_config,
            },
            total_seconds=time.perf_counter() - self._started,
            attack_details=details,
            diagnostics=diagnostics,
            diagnostics_seconds=None if diagnostics is None else self.diagnostics.seconds,
        )
        engine.state.robustness = self.results
        engine.state.metrics.update(state_metrics(self.results))


def _diagnostics(
    diagnostics: bool | GradientMaskingDiagnostics | None, attack: AttackSpec, epsilon_levels: Sequence[float]
) -> GradientMaskingDiagnostics | None:
    """The diagnostics component the evaluator runs: None asks the attack (its ``diagnostics`` attribute)."""
    if diagnostics is None:
        diagnostics = bool(getattr(attack, "diagnostics", False))
    if isinstance(diagnostics, bool):
        diagnostics = GradientMaskingDiagnostics() if diagnostics else None
    if diagnostics is not None:
        diagnostics.check_levels(epsilon_levels)
    return diagnostics


def _per_step_scorer(scorer: Callable, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], dict]:
    """What an ensemble picks its worst iterates by: the scorer's own fast per-step form where it has one (the
    default scorer's is the same Dice from one bincount), else the scorer itself."""
    per_step = getattr(scorer, "per_step", None)
    if per_step is not None:
        return per_step(num_classes)
    return lambda logits, truth: scorer(logits, truth, num_classes)
