"""Certified evaluation as a MONAI workflow: randomized smoothing's certified Dice / Jaccard vs L2 radius.

:class:`CertificationEvaluator` iterates the data loader once. For every batch it certifies each voxel of the
smoothed model (:func:`monai_advseg.certify.smoothed_segmentation`), scores the certificate at every radius
(:func:`monai_advseg.certify.certified_scores`), scores the base model clean and, when asked, attacks the base model
with L2 PGD (:func:`monai_advseg.attacks.pgd_l2`) at the attacked radii and scores both the base model and the
smoothed prediction on those images: the certified Dice at r must not exceed the latter (the report's ``check``).
The engine only certifies, scores and collects per-case arrays; the gallery's cases
(:class:`~monai_advseg.handlers.CertificationGalleryCollector`) and the progress bar
(:class:`~monai_advseg.handlers.CertificationProgressBar`) are handlers. The report is built by
:func:`~monai_advseg.handlers.certification_report.build_certification_report` and written by
:class:`~monai_advseg.handlers.certification_report.CertificationReportWriter`.
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

from monai_advseg.attacks import pgd_l2
from monai_advseg.attacks.gradient import eval_modes, forward_in_chunks, plain_copy, unwrap_ddp
from monai_advseg.attacks.scoring import predicted_classes
from monai_advseg.attacks.targets import class_indices
from monai_advseg.certify import ABSTAIN, certified_scores, smoothed_segmentation
from monai_advseg.engines.one_pass import OnePassEvaluator
from monai_advseg.engines.sweep_records import case_ids, gather_across_ranks
from monai_advseg.handlers.certification_gallery import CertificationGalleryCollector
from monai_advseg.handlers.certification_report import CertificationReportWriter, build_certification_report
from monai_advseg.handlers.sweep_progress import CertificationProgressBar

__all__ = ["CertificationEvaluator", "default_radii"]

#: The per-case arrays of every run, in :func:`~monai_advseg.handlers.build_certification_report`'s argument order.
_CASE_SCORES = ("dice", "jaccard", "certified_fraction", "abstain_rate", "base_dice")


def default_radii(sigma: float, count: int = 9) -> list[float]:
    """``count`` radii evenly from 0 to ``2 * sigma`` (beyond about ``sigma * Phi^-1(1 - alpha / voxels)`` nothing
    can be certified with ``n`` samples, and that bound is a small multiple of sigma)."""
    return [2 * sigma * i / (count - 1) for i in range(count)]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_radii(radii: Sequence[float], name: str) -> list[float]:
    try:
        values = [float(r) for r in radii]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a sequence of numbers (L2 radii in input units), got {radii!r}") from error
    bad = [r for r in values if not math.isfinite(r) or r < 0]
    if bad:
        raise ValueError(f"{name} must be finite and >= 0 (L2 radii in input units), got {bad} in {list(radii)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a radius, got {list(radii)}")
    return sorted(values)


class CertificationEvaluator(OnePassEvaluator):
    """Certified Dice / Jaccard of the Gaussian-smoothed model vs L2 radius, beside the base model and an L2 attack.

    ``run()`` certifies every batch once (``n0`` noisy forwards to choose each voxel's class, ``n`` to bound its
    probability, at family-wise level ``alpha`` over the voxels; :func:`monai_advseg.certify.smoothed_segmentation`)
    and scores the certificate at every radius. ``self.results`` (also ``self.state.certification``) then holds the
    report: one row per radius, per-case values, settings, the check, timings and versions; ``self.state.metrics``
    holds ``base_dice``, ``abstain_rate``, ``certified_dice_r<radius>``, ``certified_jaccard_r<radius>``,
    ``certified_fraction_r<radius>`` and, with the attack, ``attack_dice_base_r<radius>`` /
    ``attack_dice_smoothed_r<radius>``. With ``output_dir`` the report files are written there (rank 0; all ranks'
    cases are gathered first).

    The run is deterministic given ``seed``: one ``torch.Generator`` seeded at every run draws all noise and the
    attack's random starts.

    Examples::

        >>> from monai.networks.nets import UNet
        >>> net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
        >>> data = [{"image": torch.rand(1, 1, 16, 16), "label": torch.randint(0, 2, (1, 1, 16, 16))}]
        >>> evaluator = CertificationEvaluator("cpu", data, net, sigma=0.25, n0=2, n=8, radii=[0, 0.1], progress=False)
        >>> evaluator.run()
        >>> [row["radius"] for row in evaluator.results["metrics"]]
        [0.0, 0.1]

    Args:
        device: device to run on.
        val_data_loader: the evaluation data (image and label; one pass).
        network: the base network, returning logits ``(B, C, *spatial)`` in eval mode (a deep-supervision sequence's
            first item is taken).
        sigma: standard deviation of the Gaussian noise, in network-input units (> 0).
        n0: noisy samples that choose each voxel's class.
        n: noisy samples that bound each voxel's probability.
        alpha: family-wise error level of the certificate over a case's voxels, in (0, 1).
        tau: None: per-voxel Clopper-Pearson bounds with Bonferroni's correction (each certified voxel its own
            radius); else the probability threshold in [1/2, 1) tested with Holm's correction (every certified
            voxel gets ``sigma * Phi^-1(tau)``); see :func:`~monai_advseg.certify.smoothed_segmentation`.
        radii: L2 radii in input units at which the certificate is scored (any order, no repeats); None:
            :func:`default_radii` (0 .. 2 sigma).
        batch_size: noisy samples per forward.
        inferer: MONAI inferer (e.g. ``SlidingWindowInferer`` for 3D volumes): the certificate is of the whole
            smoothed pipeline, noise added to the full image before the inferer.
        streamed_gradient: as in :class:`~monai_advseg.engines.RobustnessEvaluator` (the attack's input gradients
            through a sliding window, one window batch at a time).
        prepare_batch: as in MONAI's ``SupervisedEvaluator``.
        include_background: score the background class too (False suits binary tasks).
        attack_radii: radii (input units, each > 0) at which the base model is attacked with L2 PGD; None: no
            attack. Radii not in ``radii`` are added to the certificate's.
        attack_steps: PGD iterations.
        attack_alpha: PGD step size in input units; None: ``2.5 * radius / attack_steps`` per radius.
        intensity_range: ``(lo, hi)`` clip range of the attacked images (None: not clipped; the smoothing's noise is
            never clipped).
        max_batch: at most this many samples per forward of the base model (clean and attacked scoring).
        check_tolerance: allowed excess of the certified Dice over the smoothed Dice under attack (the check).
        seed: seed of the generator, drawn afresh at every run.
        output_dir: folder for the report files; None writes none.
        overwrite: replace existing certification report files in ``output_dir``.
        plot: also write ``certify.png`` and ``certify_gallery.png``.
        progress: tqdm bar over batches (:class:`~monai_advseg.handlers.CertificationProgressBar`, the cost printed
            before); None shows it only on a terminal.
        checkpoint: optional weights file loaded with :func:`~monai_advseg.handlers.load_network_weights`.
        config: extra JSON-serialisable information stored in the report (e.g. bundle name, units).
        epoch_length, non_blocking, val_handlers, to_kwargs: as in MONAI's ``SupervisedEvaluator``.

    Raises:
        ValueError: on ``sigma <= 0``, ``n0`` / ``n`` / ``batch_size`` / ``attack_steps`` not ints >= 1, ``alpha``
            outside (0, 1), ``tau`` outside [1/2, 1), negative or repeated radii, attack radii <= 0, a bad
            ``intensity_range``, or a checkpoint that does not fit; all before any work.
        FileExistsError: when ``output_dir`` already holds a certification report and ``overwrite`` is False.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: nn.Module,
        sigma: float,
        n0: int = 10,
        n: int = 100,
        alpha: float = 0.001,
        tau: float | None = None,
        radii: Sequence[float] | None = None,
        batch_size: int = 32,
        inferer: Inferer | None = None,
        streamed_gradient: bool = True,
        prepare_batch: Callable = default_prepare_batch,
        include_background: bool = False,
        attack_radii: Sequence[float] | None = None,
        attack_steps: int = 20,
        attack_alpha: float | None = None,
        intensity_range: Sequence[float] | None = None,
        max_batch: int | None = None,
        check_tolerance: float = 0.0,
        seed: int = 0,
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
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite number > 0 (noise std in input units), got {sigma!r}")
        self.sigma = float(sigma)
        self.n0 = _positive_int(n0, "n0")
        self.n = _positive_int(n, "n")
        self.batch_size = _positive_int(batch_size, "batch_size")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1) (family-wise error level of the certificate), got {alpha!r}")
        self.alpha = float(alpha)
        if tau is not None and not (isinstance(tau, (int, float)) and 0.5 <= tau < 1):
            raise ValueError(
                f"tau must be None or in [0.5, 1) (the probability a certified vote must clear), got {tau!r}"
            )
        self.tau = None if tau is None else float(tau)
        self.attack_radii = [] if attack_radii is None else _check_radii(attack_radii, "attack_radii")
        if any(r <= 0 for r in self.attack_radii):
            raise ValueError(f"attack_radii must be > 0 (radius 0 is the clean image), got {self.attack_radii}")
        given = default_radii(self.sigma) if radii is None else _check_radii(radii, "radii")
        if not given and not self.attack_radii:
            raise ValueError("radii must not be empty: give at least one L2 radius (input units)")
        self.radii = sorted(set(given) | set(self.attack_radii))
        self.attack_steps = _positive_int(attack_steps, "attack_steps")
        if attack_alpha is not None and not (isinstance(attack_alpha, (int, float)) and attack_alpha > 0):
            raise ValueError(f"attack_alpha must be None or > 0 (PGD step in input units), got {attack_alpha!r}")
        self.attack_alpha = None if attack_alpha is None else float(attack_alpha)
        if intensity_range is not None:
            if len(intensity_range) != 2 or not float(intensity_range[0]) < float(intensity_range[1]):
                raise ValueError(f"intensity_range must be None or (lo, hi) with lo < hi, got {intensity_range!r}")
            intensity_range = (float(intensity_range[0]), float(intensity_range[1]))
        self.intensity_range = intensity_range
        if max_batch is not None:
            _positive_int(max_batch, "max_batch")
        self.max_batch = max_batch
        self.check_tolerance = float(check_tolerance)
        self.include_background = include_background
        self.seed = int(seed)
        self.extra_config = dict(config or {})
        self.results: dict[str, Any] | None = None
        self.report_writer = None if output_dir is None else CertificationReportWriter(output_dir, overwrite, plot)
        super().__init__(
            device, val_data_loader, network, inferer, prepare_batch, checkpoint, epoch_length, non_blocking, to_kwargs
        )
        # The base model's scoring and the attack see x -> logits of inferer(x, network) (a deep-supervision
        # network's first output), the attack through the streamed inferer: the pipeline the certificate is about.
        self.scored = self.inferred(streamed=False)
        self.attacked = self.inferred(streamed=streamed_gradient)
        # Our bookkeeping and collectors run before any user handler, so that theirs see the results.
        self.add_event_handler(Events.EPOCH_STARTED, self._start)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._finish)
        progress_bar = CertificationProgressBar(progress)  # the cost is printed either way
        self.attach_handlers([CertificationGalleryCollector(), progress_bar, self.report_writer], val_handlers)

    def certify(
        self, image: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The smoothed model's certified labels and radii of a batch (``ABSTAIN`` = -1 where it abstains)."""
        return smoothed_segmentation(
            unwrap_ddp(self.network),
            plain_copy(image),
            sigma=self.sigma,
            n0=self.n0,
            n=self.n,
            alpha=self.alpha,
            tau=self.tau,
            batch_size=self.batch_size,
            inferer=self.inferer,
            generator=generator,
        )

    def _scores(self, labels, radius, truth, radii, num_classes) -> dict[str, torch.Tensor]:
        return certified_scores(labels, radius, truth, radii, num_classes, include_background=self.include_background)

    def _base_logits(self, image: torch.Tensor) -> torch.Tensor:
        with eval_modes(self.scored):
            return forward_in_chunks(self.scored, image, self.max_batch)

    def _base_dice(self, logits: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The base model's Dice, scored like the certificate (every voxel counted as certified at any radius)."""
        labels = predicted_classes(logits)[:, None]
        radius = torch.full(labels.shape, math.inf, device=labels.device)
        return self._scores(labels, radius, truth, [0.0], num_classes)["dice"][:, 0]

    def _attack(self, image: torch.Tensor, truth: torch.Tensor, radius: float, generator: torch.Generator | None):
        step = 2.5 * radius / self.attack_steps if self.attack_alpha is None else self.attack_alpha
        with eval_modes(self.attacked):
            return pgd_l2(
                self.attacked,
                plain_copy(image),
                truth,
                radius,
                alpha=step,
                steps=self.attack_steps,
                generator=generator,
                clip_range=self.intensity_range,
            )

    def _iteration(self, engine: CertificationEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """Certify one batch, score it at every radius, and (with the attack) score the attacked images.

        Returns:
            ``{"image", "label", "certified", "radius"}`` plus ``"certified_dice"`` ``(B, R)``.
        """
        inputs, targets = self.image_and_label(batchdata)
        inputs = plain_copy(inputs)
        began = time.perf_counter()
        logits = self._base_logits(inputs)
        num_classes = max(2, logits.shape[1])
        truth = class_indices(plain_copy(targets), num_classes).long().to(inputs.device)
        self._rows["base_dice"].append(self._base_dice(logits, truth, num_classes))
        self._seconds["base_seconds"] += time.perf_counter() - began
        began = time.perf_counter()
        labels, radius = self.certify(inputs, self._generator)
        scores = self._scores(labels, radius, truth, self.radii, num_classes)
        self._seconds["certify_seconds"] += time.perf_counter() - began
        for key in ("dice", "jaccard", "certified_fraction"):
            self._rows[key].append(scores[key])
        self._rows["abstain_rate"].append(scores["abstain_rate"])
        if self.attack_radii:
            self._attack_batch(inputs, truth, labels, radius, num_classes)
        self._cases.extend(case_ids(inputs, len(self._cases), self.state.rank))
        engine.state.output = {
            "image": inputs,
            "label": targets,
            "certified": labels,
            "radius": radius,
            "certified_dice": scores["dice"],
        }
        return engine.state.output

    def _attack_batch(self, image, truth, labels, radius, num_classes) -> None:
        base, smoothed = [], []
        for index, r in enumerate(self.attack_radii):
            began = time.perf_counter()
            adversarial = self._attack(image, truth, r, self._generator)
            base.append(self._base_dice(self._base_logits(adversarial), truth, num_classes))
            self._seconds["attack_seconds"] += time.perf_counter() - began
            began = time.perf_counter()
            attacked_labels, attacked_radius = self.certify(adversarial, self._generator)
            smoothed.append(self._scores(attacked_labels, attacked_radius, truth, [0.0], num_classes)["dice"][:, 0])
            certified = (labels != ABSTAIN) & (radius >= r)
            changed = certified & (attacked_labels != ABSTAIN) & (attacked_labels != labels)
            self._flipped[index] += int(changed.sum())
            self._certified_voxels[index] += int(certified.sum())
            self._seconds["smoothed_attack_seconds"] += time.perf_counter() - began
        self._rows["attack_dice_base"].append(torch.stack(base, dim=1))
        self._rows["attack_dice_smoothed"].append(torch.stack(smoothed, dim=1))

    def _start(self, engine: CertificationEvaluator) -> None:
        keys = (*_CASE_SCORES, "attack_dice_base", "attack_dice_smoothed")
        self._rows: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        self._cases: list[str] = []
        self._flipped = [0] * len(self.attack_radii)
        self._certified_voxels = [0] * len(self.attack_radii)
        names = ("base_seconds", "certify_seconds", "attack_seconds", "smoothed_attack_seconds")
        self._seconds = dict.fromkeys(names, 0.0)
        self._started = time.perf_counter()
        self._generator = torch.Generator().manual_seed(self.seed)

    def _finish(self, engine: CertificationEvaluator) -> None:
        widths = {"dice": len(self.radii), "jaccard": len(self.radii), "certified_fraction": len(self.radii)}
        widths.update(attack_dice_base=len(self.attack_radii), attack_dice_smoothed=len(self.attack_radii))
        arrays = {
            key: torch.cat(values) if values else torch.empty(0, *([widths[key]] if key in widths else []))
            for key, values in self._rows.items()
        }
        seconds = torch.tensor(list(self._seconds.values()), dtype=torch.float64)
        counts = torch.tensor([self._flipped, self._certified_voxels], dtype=torch.int64).reshape(2, -1)
        cases = self._cases
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            arrays["counts"] = counts[None]
            cases, arrays, seconds, _ = gather_across_ranks(cases, arrays, seconds)
            counts = arrays.pop("counts").sum(dim=0)
        attack = None
        if self.attack_radii:
            attack = {
                "name": "pgd_l2",
                "target": "the base model (through the inferer); the smoothed prediction is scored on its images",
                "radii": list(self.attack_radii),
                "steps": self.attack_steps,
                "alpha": self.attack_alpha if self.attack_alpha is not None else "2.5 * radius / steps",
                "random_start": True,
                "clip_range": None if self.intensity_range is None else list(self.intensity_range),
                "seed": self.seed,
            }
        timings = dict(zip(self._seconds, seconds.tolist(), strict=True))
        timings["total_seconds"] = time.perf_counter() - self._started
        self.results = build_certification_report(
            cases,
            *(arrays[key].numpy() for key in _CASE_SCORES),
            radii=self.radii,
            certification={
                "method": "randomized smoothing for segmentation (Fischer et al., ICML 2021)",
                "sigma": self.sigma,
                "n0": self.n0,
                "n": self.n,
                "alpha": self.alpha,
                "tau": self.tau,
                "bound": "Clopper-Pearson lower bound per voxel" if self.tau is None else "exact binomial test",
                "correction": "bonferroni" if self.tau is None else "holm",
                "batch_size": self.batch_size,
                "seed": self.seed,
                "units": "sigma and radii in network-input units (L2 norm over the whole image)",
            },
            config={
                **self.network_config(),
                "include_background": self.include_background,
                "max_batch": self.max_batch,
                **self.extra_config,
            },
            seconds=timings,
            attack=attack,
            attack_radii=self.attack_radii,
            attack_dice_base=arrays["attack_dice_base"].numpy() if self.attack_radii else None,
            attack_dice_smoothed=arrays["attack_dice_smoothed"].numpy() if self.attack_radii else None,
            flipped=counts[0].tolist() if self.attack_radii else None,
            certified_voxels=counts[1].tolist() if self.attack_radii else None,
            check_tolerance=self.check_tolerance,
        )
        engine.state.certification = self.results
        engine.state.metrics.update(self._state_metrics())

    def _state_metrics(self) -> dict[str, float]:
        assert self.results is not None
        rows = self.results["metrics"]
        metrics = {"base_dice": self.results["base"]["dice"], "abstain_rate": rows[0]["abstain_rate"]}
        for row in rows:
            suffix = f"_r{row['radius']:g}"
            for key in ("certified_dice", "certified_jaccard", "certified_fraction"):
                metrics[key + suffix] = row[key]
            for key in ("attack_dice_base", "attack_dice_smoothed"):
                if row[key] is not None:
                    metrics[key + suffix] = row[key]
        return metrics
