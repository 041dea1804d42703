"""The NLCE paper's robustness protocol as a MONAI workflow: clean and attacked Dice / Jaccard over an epsilon sweep.

:class:`RobustnessEvaluator` iterates the data loader once. For every batch it scores the clean images, then hands
the batch and every strength of the sweep to its attack component (:mod:`monai_advseg.attacks.specs`), which attacks
them through the attack core, and scores the adversarial images. The engine only collects per-case arrays; the report
is built by :func:`~monai_advseg.handlers.robustness_report.build_robustness_report` and written by
:class:`~monai_advseg.handlers.robustness_report.RobustnessReportWriter`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from monai.engines.utils import default_prepare_batch
from monai.inferers import Inferer, SimpleInferer
from monai.metrics import DiceMetric, MeanIoU
from monai.transforms import AsDiscrete
from torch import nn

from monai_advseg.attacks import PAPER_EPSILON_LEVELS, levels_to_epsilon
from monai_advseg.attacks.gradient import eval_modes, forward_in_chunks, network_logits, plain_copy, unwrap_ddp
from monai_advseg.attacks.scoring import case_scores
from monai_advseg.attacks.specs import ATTACK_SPECS, AttackSpec, build_attack_spec
from monai_advseg.engines.diagnostics import FULL_RANGE_LEVELS, GradientMaskingDiagnostics
from monai_advseg.handlers.robustness_report import (
    RobustnessReportWriter,
    build_robustness_report,
    check_report_dir,
    require_matplotlib,
)
from monai_advseg.handlers.safe_load import load_network_weights
from monai_advseg.inferers import streamed_inferer

__all__ = ["ATTACKS", "GALLERY_CASES", "RobustnessEvaluator", "gallery_levels", "load_network_weights"]

#: Cases whose images the evaluator keeps for the report's gallery (the first ones it sees; bounded memory).
GALLERY_CASES = 3

#: Attack names accepted by :class:`RobustnessEvaluator` (the registry :data:`~monai_advseg.attacks.ATTACK_SPECS`).
ATTACKS: tuple[str, ...] = tuple(ATTACK_SPECS)


class _InferredNetwork(nn.Module):
    """``x -> inferer(x, network)`` as a module, so the attack core can differentiate through sliding windows.

    The network is a registered submodule: the core's ``.modules()`` / ``.eval()`` calls reach its layers. With
    ``streamed``, a MONAI ``SlidingWindowInferer`` is replaced by its streamed counterpart (same output, input gradient
    one window batch at a time: :func:`~monai_advseg.inferers.streamed_inferer`).
    """

    def __init__(self, network: nn.Module, inferer: Inferer, streamed: bool = True) -> None:
        super().__init__()
        self.network = network
        self.inferer = streamed_inferer(inferer, streamed)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return network_logits(self.inferer(image, self.network))


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


def gallery_levels(levels: Sequence[float], count: int = 3) -> list[float]:
    """The gallery's strengths: the sweep's values nearest to 1/4, 1/2 and all of its largest (distinct, ascending).

    Args:
        levels: the sweep's strengths.
        count: at most this many (1 .. 3).
    """
    positive = [e for e in levels if e > 0]
    if not positive:
        return []
    top = max(positive)
    wanted = [top / 4, top / 2, top][-count:]
    return sorted({min(positive, key=lambda e, w=w: abs(e - w)) for w in wanted})


def _case_ids(inputs: torch.Tensor, start: int, rank: int) -> list[str]:
    meta = getattr(inputs, "meta", None)
    names = meta.get("filename_or_obj") if isinstance(meta, dict) else None
    if isinstance(names, (list, tuple)) and len(names) == inputs.shape[0] and all(isinstance(n, str) for n in names):
        return [str(n) for n in names]
    prefix = f"rank{rank}_" if rank else ""
    return [f"{prefix}case_{start + i:05d}" for i in range(inputs.shape[0])]


def _per_case_details(details: dict[str, Any], batch: int, count: int) -> dict[str, Any]:
    """An ensemble's per-sample record (sample ``e * B + b``) as per-case rows ``(B, E)``."""
    winners = details["winner"]
    return {
        "winner": [[winners[e * batch + b] for e in range(count)] for b in range(batch)],
        "member_dice": {
            name: values.reshape(count, batch).T.clone() for name, values in details["member_scores"].items()
        },
    }


def _merge_details(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not parts:
        return None
    return {
        "winner": [row for part in parts for row in part["winner"]],
        "member_dice": {name: torch.cat([p["member_dice"][name] for p in parts]) for name in parts[0]["member_dice"]},
    }


class RobustnessEvaluator(SupervisedEvaluator):
    """Clean and adversarial Dice / Jaccard over an epsilon sweep (the NLCE paper's robustness protocol).

    ``run()`` evaluates every batch clean and under the attack at every epsilon. ``self.results`` (also
    ``self.state.robustness``) then holds the report: one row per epsilon after the clean row, per-case values,
    configuration, timings and versions; ``self.state.metrics`` holds ``dice``, ``jaccard`` and ``dice_eps<levels>``,
    ``jaccard_eps<levels>``. With ``output_dir`` the report files are written there (rank 0; all ranks' cases are
    gathered first). Through a MONAI ``SlidingWindowInferer`` the attacks' input gradients are streamed window batch
    by window batch (``streamed_gradient``), so attacking a large volume needs the memory of one window batch.

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
            ``"segpgd"``) or an attack component (:class:`~monai_advseg.attacks.specs.AttackSpec`), e.g. a bundle's
            ``_target_``.
        alpha_levels: step size of a named iterative attack, in levels.
        steps: iterations of a named iterative attack; None = the Kurakin schedule ``kurakin_steps(eps / alpha)``.
        max_batch: at most this many samples in one forward (attack and scoring); None = no bound.
        inferer: MONAI inferer, e.g. ``SlidingWindowInferer`` for 3D volumes; the attack differentiates through it.
        streamed_gradient: when ``inferer`` is a MONAI ``SlidingWindowInferer`` (that exact class), the attacks take
            their input gradients through :class:`~monai_advseg.inferers.StreamedSlidingWindowInferer` with the same
            settings: the stitched logits are the same bit for bit, and the gradient, equal to the naive one up to
            rounding, is computed one ``sw_batch_size`` batch of windows at a time, so the attack's memory is that of
            one window batch whatever the volume size (each window runs forward once more, without autograd). The
            network must then be one that eval mode makes deterministic (the evaluator attacks in eval mode). False
            differentiates MONAI's inferer directly (memory grows with the volume). Scoring always uses ``inferer``.
        prepare_batch: as in MONAI's ``SupervisedEvaluator``.
        include_background: score the background class too (False suits binary tasks).
        ignore_empty: passed to ``DiceMetric`` / ``MeanIoU`` (see :meth:`scores`).
        seed: seed of the random attacks' generator, drawn afresh at every run.
        diagnostics: the gradient-masking diagnostics (:class:`~monai_advseg.engines.GradientMaskingDiagnostics`):
            None = run the default ones when the attack asks for them (its ``diagnostics`` attribute; the worst case
            does), True / False = always / never, or a configured component (e.g. with a surrogate network).
        output_dir: folder for the report files; None writes none.
        overwrite: replace existing report files in ``output_dir``.
        plot: also write ``robustness.png``.
        progress: tqdm bar over epsilons x batches; None shows it only on a terminal.
        checkpoint: optional weights file loaded with :func:`load_network_weights`.
        config: extra JSON-serialisable information stored in the report (e.g. bundle name, data split).
        epoch_length, non_blocking, val_handlers, to_kwargs: as in MONAI's ``SupervisedEvaluator``.

    Raises:
        ValueError: on bad epsilons (incl. above 255 levels), a surrogate whose output shape differs from the
            model's (at the first batch, before any attack), an unknown attack, ``alpha_levels`` / ``steps`` the
            attack cannot use, a bad ``max_batch`` / ``intensity_range``, or a checkpoint that does not fit.
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
        self.attack_spec = build_attack_spec(attack, alpha_levels=alpha_levels, steps=steps)
        self.attack = self.attack_spec.name
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be None or an int >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self.include_background = include_background
        self.ignore_empty = ignore_empty
        self.seed = int(seed)
        self.progress = progress
        self.extra_config = dict(config or {})
        self.results: dict[str, Any] | None = None
        if diagnostics is None:
            diagnostics = bool(getattr(self.attack_spec, "diagnostics", False))
        if isinstance(diagnostics, bool):
            diagnostics = GradientMaskingDiagnostics() if diagnostics else None
        self.diagnostics = diagnostics
        if diagnostics is not None:
            diagnostics.check_levels(self.epsilon_levels)
        self.gallery_levels = gallery_levels(self.epsilon_levels)
        if output_dir is not None:
            check_report_dir(output_dir, overwrite)
            if plot:
                require_matplotlib()
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
        self.attacked = _InferredNetwork(unwrap_ddp(network), self.inferer, streamed=streamed_gradient)
        self.streamed_gradient = self.attacked.inferer is not self.inferer
        self._dice = DiceMetric(include_background=include_background, reduction="none", ignore_empty=ignore_empty)
        self._jaccard = MeanIoU(include_background=include_background, reduction="none", ignore_empty=ignore_empty)
        # Our sweep bookkeeping runs before any user handler so that their EPOCH_COMPLETED handlers see the results.
        self.add_event_handler(Events.EPOCH_STARTED, self._start_sweep)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._finish_sweep)
        self.report_writer = None if output_dir is None else RobustnessReportWriter(output_dir, overwrite, plot)
        if self.report_writer is not None:
            self.report_writer.attach(self)
        if val_handlers is not None:
            self._register_handlers(val_handlers)

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
        attacked = self.attacked if network is None else _InferredNetwork(unwrap_ddp(network), self.inferer)
        target = plain_copy(spec.target(label, num_classes))
        extra: dict[str, Any] = {}
        if getattr(spec, "uses_scorer", False):  # e.g. the worst case: it picks by our Dice
            extra = {
                "scorer": partial(
                    case_scores,
                    num_classes=num_classes,
                    include_background=self.include_background,
                    ignore_empty=self.ignore_empty,
                ),
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
        """Per-case scores of a batch of logits.

        The prediction is the argmax (multi-channel) or ``sigmoid >= 0.5`` (one channel) in one-hot form, scored with
        MONAI ``DiceMetric`` and ``MeanIoU`` per case; a case's value is the mean over its scored classes. With
        ``ignore_empty=True`` (MONAI's default) a class absent from a case's ground truth is NaN and left out, and a
        case with no scored class is NaN and excluded from the means; ``foreground`` keeps such cases visible.

        Returns:
            ``{"dice", "jaccard", "foreground"}``, each ``(B,)`` on the CPU; ``foreground`` is the share of voxels
            predicted as a class other than 0.
        """
        if logits.shape[1] == 1:
            indices = AsDiscrete(threshold=0.5)(torch.sigmoid(logits.float()))
        else:
            indices = AsDiscrete(argmax=True, dim=1)(logits)
        # MONAI's transforms return MetaTensors; the metrics run on plain ones (the attacks call this every step, and
        # MetaTensor dispatch made the scoring a quarter of the worst case's time).
        prediction = AsDiscrete(to_onehot=num_classes, dim=1)(indices).as_subclass(torch.Tensor)
        if label.shape[1] not in (1, num_classes):
            raise ValueError(
                f"label has {label.shape[1]} channels; expected 1 (class indices) or {num_classes} (one-hot) for a "
                f"network with {num_classes} classes"
            )
        truth = label.float() if label.shape[1] == num_classes else AsDiscrete(to_onehot=num_classes, dim=1)(label)
        truth = truth.as_subclass(torch.Tensor).to(prediction.device)
        result = {}
        for name, metric in (("dice", self._dice), ("jaccard", self._jaccard)):
            values = metric(y_pred=prediction, y=truth)
            metric.reset()
            # Plain tensors: a MetaTensor score leaked into the attacks' picks (torch.where) and so into their
            # iterates, and every layer then dispatched through MetaTensor (the worst case ran 2.4x its passes).
            result[name] = torch.nanmean(values.float(), dim=1).as_subclass(torch.Tensor).cpu()
        result["foreground"] = (1 - prediction[:, 0].flatten(1).float().mean(dim=1)).cpu()
        return result

    def _forward(self, image: torch.Tensor) -> torch.Tensor:
        return forward_in_chunks(self.attacked, image, self.max_batch)

    def _iteration(self, engine: RobustnessEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """Evaluate one batch clean and at every epsilon.

        Returns:
            ``{"image", "label", "pred"}`` (clean) plus ``"dice"``, ``"jaccard"`` and ``"foreground"`` of shape
            ``(B, 1 + E)``: column 0 clean, column ``1 + e`` at ``epsilon_levels[e]``.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[
            :2
        ]
        with eval_modes(self.attacked):
            began = time.perf_counter()
            clean_logits = self._forward(plain_copy(inputs))
            self.attack_spec.check_network(clean_logits.shape[1])
            num_classes = max(2, clean_logits.shape[1])
            if self.diagnostics is not None and not self._cases:  # bad input fails before the first attack
                self.diagnostics.check_surrogate(clean_logits, inputs)
            columns = [self.scores(clean_logits, targets, num_classes)]
            self._seconds[0] += time.perf_counter() - began
            began = time.perf_counter()
            adversarial = self.attack_sweep(inputs, targets, num_classes, self._generator)
            attack_seconds = time.perf_counter() - began
            predictions = []
            for sweep_index in range(len(self.epsilons)):
                began = time.perf_counter()
                logits = self._forward(adversarial[sweep_index])
                columns.append(self.scores(logits, targets, num_classes))
                self._seconds[1 + sweep_index] += time.perf_counter() - began
                if self.epsilon_levels[sweep_index] in self.gallery_levels and len(self._gallery) < GALLERY_CASES:
                    predictions.append(logits)
            self._keep_gallery(inputs, targets, clean_logits, adversarial, predictions)
        # One call attacked every strength: its time is shared by the strengths' gradient steps.
        steps = torch.tensor(self.step_counts(), dtype=torch.float64)
        shares = steps / steps.sum() if bool(steps.sum() > 0) else torch.full_like(steps, 1 / len(steps))
        self._seconds[1:] += attack_seconds * shares
        if self._bar is not None:
            self._bar.update(len(self.epsilons))
        output = {key: torch.stack([column[key] for column in columns], dim=1) for key in columns[0]}
        details = (
            getattr(self.attack_spec, "details", None) if getattr(self.attack_spec, "uses_scorer", False) else None
        )
        if details:
            self._details.append(_per_case_details(details, inputs.shape[0], len(self.epsilons)))
        if self.diagnostics is not None:  # after the details: the references may run the same component again
            began = time.perf_counter()
            with eval_modes(self.attacked):
                self.diagnostics.collect(self, inputs, targets, num_classes, self._generator)
            self._diagnostics_seconds += time.perf_counter() - began
        self._cases.extend(_case_ids(inputs, len(self._cases), self.state.rank))
        for key, values in output.items():
            self._rows[key].append(values)
        self._empty.append(self._no_foreground(targets, num_classes))
        engine.state.output = {"image": inputs, "label": targets, "pred": clean_logits, **output}
        return engine.state.output

    def _keep_gallery(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        clean_logits: torch.Tensor,
        adversarial: torch.Tensor,
        predictions: list[torch.Tensor],
    ) -> None:
        """Keep the first :data:`GALLERY_CASES` cases' images and predictions at the gallery strengths (CPU)."""
        take = min(image.shape[0], GALLERY_CASES - len(self._gallery))
        if take <= 0 or not predictions:
            return
        columns = [self.epsilon_levels.index(e) for e in self.gallery_levels]

        def labels_of(logits: torch.Tensor) -> torch.Tensor:
            if logits.shape[1] == 1:
                return (torch.sigmoid(logits.float()) >= 0.5).long()[:, 0]
            return logits.argmax(dim=1)

        truth = label[:, 0] if label.shape[1] == 1 else label.argmax(dim=1)
        for b in range(take):
            self._gallery.append(
                {
                    "image": plain_copy(image[b]).detach().cpu().float().numpy(),
                    "label": truth[b].detach().cpu().long().numpy(),
                    "clean_prediction": labels_of(clean_logits[b : b + 1])[0].cpu().numpy(),
                    "eps_levels": list(self.gallery_levels),
                    "adversarial": [plain_copy(adversarial[c, b]).detach().cpu().float().numpy() for c in columns],
                    "adversarial_prediction": [labels_of(p[b : b + 1])[0].cpu().numpy() for p in predictions],
                }
            )

    @staticmethod
    def _no_foreground(label: torch.Tensor, num_classes: int) -> torch.Tensor:
        foreground = label[:, 1:].sum(dim=1) if label.shape[1] == num_classes else label[:, 0]
        return ~(foreground.flatten(1) > 0).any(dim=1).cpu()

    def _start_sweep(self, engine: RobustnessEvaluator) -> None:
        self._cases: list[str] = []
        self._rows: dict[str, list[torch.Tensor]] = {"dice": [], "jaccard": [], "foreground": []}
        self._empty: list[torch.Tensor] = []
        self._details: list[dict[str, Any]] = []
        self._gallery: list[dict[str, Any]] = []
        self._diagnostics_seconds = 0.0
        if self.diagnostics is not None:
            self.diagnostics.reset()
        self._seconds = torch.zeros(1 + len(self.epsilons), dtype=torch.float64)
        self._started = time.perf_counter()
        self._generator = torch.Generator().manual_seed(self.seed) if self.attack_spec.random else None
        self._bar = None
        steps = self.step_counts()
        print(  # the cost before the run, with or without a progress bar
            f"robustness {self.attack}: at most {sum(steps)} forward + input-backward passes per image over "
            f"{len(steps)} eps (per eps: {steps}), plus {1 + len(steps)} scoring forwards",
            file=sys.stderr,
        )
        if self.progress is not False:
            from tqdm.auto import tqdm

            length = self.state.epoch_length
            self._bar = tqdm(
                total=None if length is None else length * len(self.epsilons),
                desc=f"robustness {self.attack}",
                unit="eps-batch",
                disable=None if self.progress is None else False,
            )

    def _finish_sweep(self, engine: RobustnessEvaluator) -> None:
        if self._bar is not None:
            self._bar.close()
        count = 1 + len(self.epsilons)
        arrays = {k: torch.cat(v) if v else torch.empty(0, count) for k, v in self._rows.items()}
        arrays["empty"] = torch.cat(self._empty) if self._empty else torch.empty(0, dtype=torch.bool)
        cases, seconds = self._cases, self._seconds
        details = _merge_details(self._details)
        diagnostics = None
        if self.diagnostics is not None:  # this rank's cases (under DDP: rank 0's cases go into the report)
            diagnostics = self.diagnostics.report(self, arrays["dice"][:, 0], arrays["dice"][:, 1:])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            cases, arrays, seconds, details = self._gather(cases, arrays, seconds, details)
        network = unwrap_ddp(self.network)
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
                "network": type(network).__name__,
                "inferer": type(self.inferer).__name__,
                "streamed_gradient": self.streamed_gradient,
                "intensity_range": list(self.intensity_range),
                "include_background": self.include_background,
                "ignore_empty": self.ignore_empty,
                "max_batch": self.max_batch,
                **self.extra_config,
            },
            total_seconds=time.perf_counter() - self._started,
            attack_details=details,
            diagnostics=diagnostics,
            diagnostics_seconds=self._diagnostics_seconds if diagnostics is not None else None,
        )
        engine.state.robustness = self.results
        engine.state.robustness_gallery = self._gallery
        engine.state.metrics.update(self._state_metrics())

    @staticmethod
    def _gather(
        cases: list[str], arrays: dict[str, torch.Tensor], seconds: torch.Tensor, details: dict[str, Any] | None
    ) -> tuple[list[str], dict[str, torch.Tensor], torch.Tensor, dict[str, Any] | None]:
        # Objects, not tensors: ranks may hold different numbers of cases and gloo / nccl both support this path.
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (cases, arrays, seconds, details))
        return (
            [c for part in gathered for c in part[0]],
            {key: torch.cat([part[1][key] for part in gathered]) for key in arrays},
            torch.stack([part[2] for part in gathered]).max(dim=0).values,
            _merge_details([part[3] for part in gathered if part[3]]),
        )

    def _state_metrics(self) -> dict[str, float]:
        assert self.results is not None
        metrics: dict[str, float] = {}
        for row in self.results["metrics"]:
            suffix = "" if row["setting"] == "clean" else f"_eps{row['eps_levels']:g}"
            metrics[f"dice{suffix}"] = row["mean_dice"]
            metrics[f"jaccard{suffix}"] = row["mean_jaccard"]
        return metrics
