"""The NLCE paper's robustness protocol as a MONAI workflow: clean and attacked Dice / Jaccard over an epsilon sweep.

:class:`RobustnessEvaluator` iterates the data loader once. For every batch it evaluates the clean images, then attacks
all epsilons of the sweep in one batch (the batch repeated once per epsilon with a per-sample epsilon tensor) through
the attack core, which drops samples whose step budget is spent. In eval mode every sample's trajectory depends on
that sample only, so the batched sweep gives the same adversarial images as attacking each epsilon on its own.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from monai.engines.utils import default_prepare_batch
from monai.inferers import Inferer, SimpleInferer
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.utils import one_hot
from torch import nn

from monai_advseg.attacks import (
    PAPER_EPSILON_LEVELS,
    fgsm,
    inverse_mask,
    iterative_fgsm,
    kurakin_steps,
    levels_to_epsilon,
    pgd,
    segpgd,
)
from monai_advseg.attacks.gradient import network_logits, plain_copy
from monai_advseg.handlers.robustness_report import RobustnessReportWriter, check_report_dir
from monai_advseg.handlers.safe_load import load_weights_only

__all__ = ["ATTACKS", "RobustnessEvaluator", "load_network_weights"]

#: Attack names accepted by :class:`RobustnessEvaluator`.
ATTACKS: tuple[str, ...] = ("ifgsm_targeted", "fgsm", "pgd", "segpgd")

_STATE_DICT_KEYS = ("network", "model", "state_dict")


def _strip_ddp(network: nn.Module) -> nn.Module:
    # An input-only backward through DistributedDataParallel would leave its gradient all-reduce pending.
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


class _InferredNetwork(nn.Module):
    """``x -> inferer(x, network)`` as a module, so the attack core can differentiate through sliding windows.

    The network is a registered submodule: the core's ``.modules()`` / ``.eval()`` calls reach its layers.
    """

    def __init__(self, network: nn.Module, inferer: Inferer) -> None:
        super().__init__()
        self.network = network
        self.inferer = inferer

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return network_logits(self.inferer(image, self.network))


@contextmanager
def _eval_modes(module: nn.Module) -> Iterator[None]:
    # Restores every submodule's own flag, unlike ``module.train()``, which would flip deliberately frozen layers.
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in modes:
            sub.training = training


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
    module = _strip_ddp(network)
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
    if len(set(values)) != len(values):
        raise ValueError(f"epsilons must not repeat a strength, got {list(epsilons)}")
    return sorted(values)


def _discretize(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    if logits.shape[1] == 1:
        indices = (torch.sigmoid(logits.float()) > 0.5).long()
    else:
        indices = logits.argmax(dim=1, keepdim=True)
    return one_hot(indices, num_classes, dim=1)


def _label_one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    if label.shape[1] == 1:
        return one_hot(label.long(), num_classes, dim=1)
    if label.shape[1] == num_classes:
        return label.float()
    raise ValueError(
        f"label has {label.shape[1]} channels; expected 1 (class indices) or {num_classes} (one-hot) for a network "
        f"with {num_classes} classes"
    )


def _case_ids(inputs: torch.Tensor, start: int, rank: int) -> list[str]:
    meta = getattr(inputs, "meta", None)
    names = meta.get("filename_or_obj") if isinstance(meta, dict) else None
    if isinstance(names, (list, tuple)) and len(names) == inputs.shape[0] and all(isinstance(n, str) for n in names):
        return [str(n) for n in names]
    prefix = f"rank{rank}_" if rank else ""
    return [f"{prefix}case_{start + i:05d}" for i in range(inputs.shape[0])]


def _summary(values: np.ndarray) -> tuple[float, float, int]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return float(finite.mean()), std, int(finite.size)


class RobustnessEvaluator(SupervisedEvaluator):
    """Clean and adversarial Dice / Jaccard over an epsilon sweep (the NLCE paper's robustness protocol).

    ``run()`` iterates ``val_data_loader`` once. Each batch is evaluated clean, then under attack at every epsilon.
    After the epoch, ``self.results`` (also ``self.state.robustness``) holds the report: one row per epsilon with the
    clean row first (eps 0), per-case values, configuration, timings and versions; ``self.state.metrics`` holds
    ``dice``, ``jaccard`` (clean) and ``dice_eps<levels>``, ``jaccard_eps<levels>``. When ``output_dir`` is given the
    reports ``robustness.csv``, ``robustness_cases.csv``, ``robustness.json`` and ``robustness.png`` are written there
    (on rank 0 only under ``torch.distributed``; per-case values of all ranks are gathered first).

    Attacks (the sign step and the projection are the attack core's):

    - ``"ifgsm_targeted"`` (default, the paper's): targeted iterative FGSM towards ``inverse_mask(label)``,
      ``alpha = alpha_levels`` (1 level), ``kurakin_steps(eps)`` iterations.
    - ``"fgsm"``: one untargeted FGSM step of size eps.
    - ``"pgd"``: untargeted PGD from a random start drawn from a CPU generator seeded with ``seed`` at every run.
    - ``"segpgd"``: PGD with SegPGD's loss weights (multi-channel networks only).

    Epsilons are given in levels of the 0..255 scale and converted to input units with ``intensity_range``, which is
    also the clip range of the attacked images.

    Metrics: the prediction is the argmax (multi-channel) or ``sigmoid > 0.5`` (one channel) in one-hot form, scored
    with MONAI ``DiceMetric`` and ``MeanIoU`` (Jaccard) per case; a case's value is the mean over its scored classes.
    With ``ignore_empty=True`` (MONAI's default) a class absent from a case's ground truth is NaN and left out; a case
    with no scored class at all is NaN and excluded from the means, and ``n_cases`` counts the cases that were
    scored. With ``ignore_empty=False`` an empty class scores 1 when the prediction is empty too, else 0.

    Args:
        device: device to run on.
        val_data_loader: the evaluation data (image and label; one pass).
        network: the trained network, returning logits ``(B, C, *spatial)`` in eval mode.
        epsilons: attack strengths in 0..255 levels (any order, no repeats; 0 gives a row equal to the clean one).
        intensity_range: ``(lo, hi)`` of the network input, for the level conversion and as clip range.
        attack: one of :data:`ATTACKS`.
        alpha_levels: step size of the iterative attacks, in levels.
        steps: iterations of the iterative attacks; None = ``kurakin_steps(eps)`` per epsilon.
        max_batch: largest number of (epsilon, image) samples attacked together; None = all of a batch at once.
            Samples are ordered by epsilon, so each chunk holds similar step counts.
        inferer: MONAI inferer, e.g. ``SlidingWindowInferer`` for 3D volumes; the attack differentiates through it.
        prepare_batch: as in MONAI's ``SupervisedEvaluator``.
        include_background: score the background class too (False suits binary tasks).
        ignore_empty: passed to ``DiceMetric`` / ``MeanIoU`` (see above).
        seed: seed of the PGD / SegPGD random start.
        output_dir: folder for the report files; None writes none.
        overwrite: replace existing report files in ``output_dir`` (otherwise ``FileExistsError``, checked here
            and again when writing).
        plot: also write ``robustness.png`` (needs matplotlib).
        progress: tqdm bar over epsilons x batches; None shows it only on a terminal.
        checkpoint: optional weights file loaded with :func:`load_network_weights`.
        config: extra JSON-serialisable information stored in the report (e.g. bundle name, data split).
        epoch_length, non_blocking, val_handlers, to_kwargs: as in MONAI's ``SupervisedEvaluator``.

    Raises:
        ValueError: on an empty or negative epsilon list, an unknown attack, bad ``alpha_levels`` / ``steps`` /
            ``max_batch`` / ``intensity_range``, or a checkpoint that does not fit.
        FileExistsError: when ``output_dir`` already holds a report and ``overwrite`` is False.
        ImportError: when ``plot`` is True and matplotlib is missing.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: nn.Module,
        epsilons: Sequence[float] = PAPER_EPSILON_LEVELS,
        intensity_range: Sequence[float] = (0.0, 1.0),
        attack: str = "ifgsm_targeted",
        alpha_levels: float = 1.0,
        steps: int | None = None,
        max_batch: int | None = None,
        inferer: Inferer | None = None,
        prepare_batch: Callable = default_prepare_batch,
        include_background: bool = False,
        ignore_empty: bool = True,
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
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose one of {list(ATTACKS)}")
        self.epsilon_levels = _check_epsilons(epsilons)
        if len(intensity_range) != 2:
            raise ValueError(f"intensity_range must be (lo, hi), got {intensity_range!r}")
        self.intensity_range = (float(intensity_range[0]), float(intensity_range[1]))
        self.epsilons = levels_to_epsilon(self.epsilon_levels, self.intensity_range)
        if not (math.isfinite(float(alpha_levels)) and float(alpha_levels) > 0):
            raise ValueError(f"alpha_levels must be a finite number > 0, got {alpha_levels!r}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be None (Kurakin schedule) or an int >= 1, got {steps!r}")
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be None or an int >= 1, got {max_batch!r}")
        self.attack = attack
        self.alpha_levels = float(alpha_levels)
        self.alpha = levels_to_epsilon(self.alpha_levels, self.intensity_range)
        self.steps = steps
        self.max_batch = max_batch
        self.include_background = include_background
        self.ignore_empty = ignore_empty
        self.seed = int(seed)
        self.progress = progress
        self.extra_config = dict(config or {})
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.results: dict[str, Any] | None = None
        if self.output_dir is not None:
            check_report_dir(self.output_dir, overwrite)
            if plot:
                from monai_advseg.handlers.robustness_report import require_matplotlib

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
        self.attacked = _InferredNetwork(_strip_ddp(network), self.inferer)
        self._dice = DiceMetric(include_background=include_background, reduction="none", ignore_empty=ignore_empty)
        self._jaccard = MeanIoU(include_background=include_background, reduction="none", ignore_empty=ignore_empty)
        # Our sweep bookkeeping runs before any user handler so that their EPOCH_COMPLETED handlers see the results.
        self.add_event_handler(Events.EPOCH_STARTED, self._start_sweep)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._finish_sweep)
        if self.output_dir is not None:
            self.report_writer: RobustnessReportWriter | None = RobustnessReportWriter(
                self.output_dir, overwrite=overwrite, plot=plot
            )
            self.report_writer.attach(self)
        else:
            self.report_writer = None
        if val_handlers is not None:
            self._register_handlers(val_handlers)

    # ----------------------------------------------------------------------------------------------- attack sweep
    def step_counts(self) -> list[int]:
        """Iterations per epsilon of the sweep (1 for FGSM), in the order of ``self.epsilon_levels``."""
        if self.attack == "fgsm":
            return [1 if e > 0 else 0 for e in self.epsilon_levels]
        if self.steps is not None:
            return [self.steps if e > 0 else 0 for e in self.epsilon_levels]
        return [kurakin_steps(e) for e in self.epsilon_levels]

    def attack_target(self, label: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The label the attack loss compares with: the inverse mask (targeted I-FGSM), else the ground truth."""
        if self.attack == "ifgsm_targeted":
            return inverse_mask(label, num_classes)
        if self.attack == "segpgd" and label.shape[1] != 1:
            return label.argmax(dim=1, keepdim=True)
        return label

    def attack_samples(
        self,
        image: torch.Tensor,
        target: torch.Tensor,
        epsilon: torch.Tensor,
        steps: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Attack a batch whose samples carry their own strength and step count (one call to the core).

        Args:
            image: ``(N, C, *spatial)`` images.
            target: what :meth:`attack_target` returns for their labels.
            epsilon: ``(N,)`` strengths in input units.
            steps: ``(N,)`` iterations (ignored by FGSM).
            generator: random source of the PGD / SegPGD start.

        Returns:
            The adversarial images.
        """
        clip = self.intensity_range
        if self.attack == "ifgsm_targeted":
            return iterative_fgsm(
                self.attacked, image, target, epsilon, alpha=self.alpha, steps=steps, targeted=True, clip_range=clip
            )
        if self.attack == "fgsm":
            return fgsm(self.attacked, image, target, epsilon, clip_range=clip)
        run = pgd if self.attack == "pgd" else segpgd
        return run(
            self.attacked, image, target, epsilon, alpha=self.alpha, steps=steps, generator=generator, clip_range=clip
        )

    def attack_sweep(
        self, image: torch.Tensor, label: torch.Tensor, num_classes: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Adversarial images of a batch for every epsilon of the sweep, attacked together.

        Args:
            image: ``(B, C, *spatial)`` images in input units.
            label: ground truth, class indices ``(B, 1, *spatial)`` or one-hot.
            num_classes: classes including background (2 for a 1-channel sigmoid network).
            generator: random source of the PGD / SegPGD start.

        Returns:
            ``(E, B, C, *spatial)``, index ``e`` holding the images attacked at ``self.epsilon_levels[e]``.
        """
        adversarial = [chunk for chunk, _, _ in self._sweep_chunks(image, label, num_classes, generator)]
        return torch.cat(adversarial).reshape(len(self.epsilons), *image.shape)

    def _sweep_chunks(
        self, image: torch.Tensor, label: torch.Tensor, num_classes: int, generator: torch.Generator | None
    ) -> Iterable[tuple[torch.Tensor, slice, float]]:
        batch, count = image.shape[0], len(self.epsilons)
        image = plain_copy(image)
        target = plain_copy(self.attack_target(label, num_classes))
        eps = torch.tensor(self.epsilons, dtype=torch.float64).repeat_interleave(batch)
        steps = torch.tensor(self.step_counts(), dtype=torch.long).repeat_interleave(batch)
        size = batch * count if self.max_batch is None else self.max_batch
        for start in range(0, batch * count, size):
            index = slice(start, min(start + size, batch * count))
            rows = torch.arange(index.start, index.stop) % batch
            began = time.perf_counter()
            adversarial = self.attack_samples(image[rows], target[rows], eps[index], steps[index], generator)
            yield adversarial, index, time.perf_counter() - began

    # ----------------------------------------------------------------------------------------------- per batch
    def _scores(self, logits: torch.Tensor, label: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, ...]:
        prediction = _discretize(logits, num_classes)
        truth = _label_one_hot(label, num_classes).to(prediction.device)
        scores = []
        for metric in (self._dice, self._jaccard):
            values = metric(y_pred=prediction, y=truth)
            metric.reset()
            scores.append(torch.nanmean(values.float(), dim=1).cpu())
        return tuple(scores)

    def _forward(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.attacked(image)

    def _iteration(self, engine: RobustnessEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """Evaluate one batch clean and at every epsilon.

        Returns:
            ``{"image", "label", "pred"}`` (clean) plus ``"dice"`` and ``"jaccard"`` of shape ``(B, 1 + E)``, column 0
            clean and column ``1 + e`` at ``epsilon_levels[e]``.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        with _eval_modes(self.attacked):
            return self._evaluate_batch(engine, inputs, targets)

    def _evaluate_batch(self, engine: RobustnessEvaluator, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
        size, count = inputs.shape[0], len(self.epsilons)
        began = time.perf_counter()
        clean_logits = self._forward(plain_copy(inputs))
        num_classes = max(2, clean_logits.shape[1])
        if self.attack == "segpgd" and clean_logits.shape[1] < 2:
            raise ValueError("attack='segpgd' needs a multi-channel network (C > 1); this one returns 1 channel")
        dice = torch.empty(size, 1 + count)
        jaccard = torch.empty(size, 1 + count)
        dice[:, 0], jaccard[:, 0] = self._scores(clean_logits, targets, num_classes)
        self._seconds[0] += time.perf_counter() - began
        step_weights = torch.tensor(self.step_counts(), dtype=torch.float64).repeat_interleave(size)
        done = 0
        for adversarial, index, attack_seconds in self._sweep_chunks(inputs, targets, num_classes, self._generator):
            began = time.perf_counter()
            rows = torch.arange(index.start, index.stop)
            chunk_dice, chunk_jaccard = self._scores(self._forward(adversarial), targets[rows % size], num_classes)
            dice[rows % size, 1 + rows // size] = chunk_dice
            jaccard[rows % size, 1 + rows // size] = chunk_jaccard
            # The core attacks the chunk as one batch: its time is shared by sample-iterations, the forward by samples.
            forward_seconds = time.perf_counter() - began
            weights = step_weights[index]
            weights = weights / weights.sum() if bool(weights.sum() > 0) else torch.full_like(weights, 1 / len(weights))
            shares = attack_seconds * weights + forward_seconds / len(weights)
            self._seconds[1:].index_add_(0, rows // size, shares)
            if self._bar is not None:
                self._bar.update(index.stop // size - done)
                done = index.stop // size
        self._cases.extend(_case_ids(inputs, self._case_count, self.state.rank))
        self._case_count += size
        self._dice_rows.append(dice)
        self._jaccard_rows.append(jaccard)
        engine.state.output = {
            "image": inputs,
            "label": targets,
            "pred": clean_logits,
            "dice": dice,
            "jaccard": jaccard,
        }
        return engine.state.output

    # ----------------------------------------------------------------------------------------------- epoch hooks
    def _start_sweep(self, engine: RobustnessEvaluator) -> None:
        self._cases: list[str] = []
        self._case_count = 0
        self._dice_rows: list[torch.Tensor] = []
        self._jaccard_rows: list[torch.Tensor] = []
        self._seconds = torch.zeros(1 + len(self.epsilons), dtype=torch.float64)
        self._started = time.perf_counter()
        self._generator = torch.Generator().manual_seed(self.seed) if self.attack in ("pgd", "segpgd") else None
        self._bar = None
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
        dice = torch.cat(self._dice_rows) if self._dice_rows else torch.empty(0, count)
        jaccard = torch.cat(self._jaccard_rows) if self._jaccard_rows else torch.empty(0, count)
        cases, seconds = self._cases, self._seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            cases, dice, jaccard, seconds = self._gather(cases, dice, jaccard, seconds)
        self.results = self._build_results(cases, dice.numpy(), jaccard.numpy(), seconds.tolist())
        engine.state.robustness = self.results
        engine.state.metrics.update(self._state_metrics())

    @staticmethod
    def _gather(
        cases: list[str], dice: torch.Tensor, jaccard: torch.Tensor, seconds: torch.Tensor
    ) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        # Objects, not tensors: ranks may hold different numbers of cases and gloo / nccl both support this path.
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (cases, dice, jaccard, seconds))
        return (
            [c for part in gathered for c in part[0]],
            torch.cat([part[1] for part in gathered]),
            torch.cat([part[2] for part in gathered]),
            torch.stack([part[3] for part in gathered]).max(dim=0).values,
        )

    def _build_results(
        self, cases: list[str], dice: np.ndarray, jaccard: np.ndarray, seconds: list[float]
    ) -> dict[str, Any]:
        levels = [0.0, *self.epsilon_levels]
        units = [0.0, *self.epsilons]
        steps = [0, *self.step_counts()]
        rows = []
        for column, (level, unit, step) in enumerate(zip(levels, units, steps, strict=True)):
            mean_dice, std_dice, n_cases = _summary(dice[:, column])
            mean_jaccard, std_jaccard, _ = _summary(jaccard[:, column])
            rows.append(
                {
                    "setting": "clean" if column == 0 else "attack",
                    "eps_levels": level,
                    "eps": unit,
                    "steps": step,
                    "mean_dice": mean_dice,
                    "std_dice": std_dice,
                    "mean_jaccard": mean_jaccard,
                    "std_jaccard": std_jaccard,
                    "n_cases": n_cases,
                    "seconds": seconds[column],
                }
            )
        per_case = [
            {
                "case": case,
                "setting": "clean" if column == 0 else "attack",
                "eps_levels": levels[column],
                "eps": units[column],
                "dice": float(dice[i, column]),
                "jaccard": float(jaccard[i, column]),
            }
            for column in range(len(levels))
            for i, case in enumerate(cases)
        ]
        import monai_advseg

        return {
            "format": "monai_advseg.robustness/1",
            "config": {
                "network": type(_strip_ddp(self.network)).__name__,
                "inferer": type(self.inferer).__name__,
                "intensity_range": list(self.intensity_range),
                "include_background": self.include_background,
                "ignore_empty": self.ignore_empty,
                "max_batch": self.max_batch,
                "empty_cases": "cases with no scored class are NaN (null in JSON) and excluded from the means",
                "std": "sample standard deviation over the scored cases (0 for a single case)",
                **self.extra_config,
            },
            "attack": {
                "name": self.attack,
                "targeted": self.attack == "ifgsm_targeted",
                "target": "inverse_mask" if self.attack == "ifgsm_targeted" else "ground truth",
                "alpha_levels": None if self.attack == "fgsm" else self.alpha_levels,
                "alpha": None if self.attack == "fgsm" else self.alpha,
                "steps": "kurakin" if self.steps is None and self.attack != "fgsm" else self.steps,
                "seed": self.seed if self.attack in ("pgd", "segpgd") else None,
            },
            "epsilons": {"levels": list(self.epsilon_levels), "input_units": list(self.epsilons)},
            "metrics": rows,
            "cases": per_case,
            "n_cases": len(cases),
            "timings": {
                "total_seconds": time.perf_counter() - self._started,
                "clean_seconds": seconds[0],
                "attack_seconds": float(sum(seconds[1:])),
                "per_eps_seconds": "attack time shared by gradient steps, plus the adversarial forward per sample",
            },
            "versions": {
                "monai_advseg": getattr(monai_advseg, "__version__", "unknown"),
                "torch": torch.__version__,
                "monai": monai.__version__,
                "python": platform.python_version(),
            },
        }

    def _state_metrics(self) -> dict[str, float]:
        assert self.results is not None
        metrics: dict[str, float] = {}
        for row in self.results["metrics"]:
            suffix = "" if row["setting"] == "clean" else f"_eps{row['eps_levels']:g}"
            metrics[f"dice{suffix}"] = row["mean_dice"]
            metrics[f"jaccard{suffix}"] = row["mean_jaccard"]
        return metrics
