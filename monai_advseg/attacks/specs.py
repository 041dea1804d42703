"""Attacks as components: what a robustness sweep needs to know about an attack, in one object per attack.

An :class:`AttackSpec` answers everything the evaluator used to decide by the attack's name: the label its loss
compares with (:meth:`~AttackSpec.target`), its iterations per strength (:meth:`~AttackSpec.step_counts`), whether it
draws random numbers (:attr:`~AttackSpec.random`), what the report records (:meth:`~AttackSpec.describe`) and how it
attacks a batch at every strength of a sweep (:meth:`~AttackSpec.sweep`). The built-in attacks are registered in
:data:`ATTACK_SPECS` under the names that bundles and command lines use; a bundle may instead give any object with
this interface as a ``_target_`` component. Strengths are in 0..255 levels of ``intensity_range``, as in the NLCE
paper.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from monai_advseg.attacks.gradient import LossFn, forward_in_chunks
from monai_advseg.attacks.iterative import _iterate, segpgd_step_loss
from monai_advseg.attacks.losses import per_channel_binary_cross_entropy
from monai_advseg.attacks.queries import random_search, uniform_noise
from monai_advseg.attacks.schedule import kurakin_steps_for, levels_to_epsilon
from monai_advseg.attacks.sweep import fgsm_sweep, iterative_fgsm_sweep, repeat_for_sweep
from monai_advseg.attacks.targets import class_indices, inverse_mask

__all__ = [
    "ATTACK_SPECS",
    "AttackSpec",
    "FGSMSpec",
    "IterativeFGSMSpec",
    "NoiseSpec",
    "PGDL2Spec",
    "PGDSpec",
    "RandomSearchSpec",
    "SegPGDSpec",
    "WORST_CASE_MEMBERS",
    "WorstCaseSpec",
    "build_attack_spec",
]


def _check_steps(steps: int | None) -> int | None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be None (Kurakin schedule) or an int >= 1, got {steps!r}")
    return steps


class AttackSpec:
    """The interface of an attack in a robustness sweep; subclass it (or match it) to plug in your own attack.

    Attributes:
        name: the name recorded in reports.
        targeted: the loss is descended towards :meth:`target` instead of ascended.
        random: the attack draws random numbers and needs a generator (seeded by the evaluator).
        shares_trajectories: the strengths of an image share their work (a report note, not a switch).
        diagnostics: the evaluator runs the gradient-masking diagnostics with this attack unless told otherwise
            (the worst case does: a claim of robustness needs them).
        accepts_loss: the attack follows the gradient of one loss that :func:`build_attack_spec` may replace.
        loss_fn: that loss, ``loss_fn(logits, target)`` (None: the attack core's summed cross-entropy).
        uses_loss: the attack follows a loss of the network's output at all (uniform noise does not).
        multi_label: the network's channels are independent sigmoid labels (set by :func:`build_attack_spec`): the
            target is one binary channel per output channel, and :meth:`check_network` refuses several channels
            unless :attr:`loss_fn` is set (the built-in losses are softmax ones over the channels).
    """

    name: str = "custom"
    targeted: bool = False
    random: bool = False
    shares_trajectories: bool = False
    diagnostics: bool = False
    accepts_loss: bool = False
    loss_fn: LossFn | None = None
    uses_loss: bool = True
    multi_label: bool = False

    def target(self, label: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The label the attack loss compares with (default: the ground truth itself)."""
        return label

    def step_counts(self, levels: Sequence[float]) -> list[int]:
        """Gradient steps per strength (0 at strength 0); the evaluator shares its attack time by them."""
        raise NotImplementedError

    def check_network(self, channels: int) -> None:
        """Raise ``ValueError`` when the attack cannot run on a network returning ``channels`` channels."""
        if self.multi_label and channels > 1 and self.uses_loss and self.loss_fn is None:
            raise ValueError(
                f"multi_label: attack {self.name!r} follows a softmax loss over the {channels} channels; use one of "
                "ifgsm_targeted, fgsm, pgd (per-channel binary cross-entropy), uniform_noise, or a component with its "
                "own loss_fn"
            )

    def describe(self, intensity_range: Sequence[float], seed: int | None) -> dict[str, Any]:
        """The report's ``attack`` block."""
        return {"name": self.name, "targeted": self.targeted, "seed": seed if self.random else None}

    def sweep(
        self,
        network: nn.Module,
        image: torch.Tensor,
        target: torch.Tensor,
        levels: Sequence[float],
        *,
        intensity_range: Sequence[float],
        max_batch: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Attack ``image`` at every strength of ``levels``.

        Args:
            network: logits ``(B, C, *spatial)`` from the input (an inferer already wrapped in, if any).
            image: ``(B, C, *spatial)`` in input units.
            target: what :meth:`target` returned for the batch's label.
            levels: strengths in 0..255 levels, ascending.
            intensity_range: ``(lo, hi)`` of the input: the unit of a level and the clip range.
            max_batch: at most this many samples in one forward; None: no bound.
            generator: random source, for attacks with :attr:`random`.

        Returns:
            ``(E, B, C, *spatial)`` adversarial images, index ``e`` at ``levels[e]``.
        """
        raise NotImplementedError


class _SteppedSpec(AttackSpec):
    """Iterative sign attacks: a step of ``alpha_levels`` and the Kurakin schedule or a fixed count."""

    def __init__(self, alpha_levels: float = 1.0, steps: int | None = None) -> None:
        if not (isinstance(alpha_levels, (int, float)) and math.isfinite(alpha_levels) and alpha_levels > 0):
            raise ValueError(f"alpha_levels must be a finite number > 0, got {alpha_levels!r}")
        self.alpha_levels = float(alpha_levels)
        self.steps = _check_steps(steps)

    def step_counts(self, levels: Sequence[float]) -> list[int]:
        if self.steps is not None:
            return [self.steps if e > 0 else 0 for e in levels]
        return [kurakin_steps_for(e, self.alpha_levels) for e in levels]

    def describe(self, intensity_range: Sequence[float], seed: int | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "targeted": self.targeted,
            "target": "inverse_mask" if self.targeted else "ground truth",
            "alpha_levels": self.alpha_levels,
            "alpha": levels_to_epsilon(self.alpha_levels, tuple(intensity_range)),
            "steps": "kurakin" if self.steps is None else self.steps,
            "seed": seed if self.random else None,
        }


class IterativeFGSMSpec(_SteppedSpec):
    """I-FGSM over a sweep on one shared trajectory (:func:`~monai_advseg.attacks.sweep.iterative_fgsm_sweep`).

    The default is the NLCE paper's attack: targeted towards ``inverse_mask(label)``, steps of one level,
    ``kurakin_steps(eps / alpha)`` iterations (registered as ``"ifgsm_targeted"``).

    Args:
        targeted: towards the inverse mask (True) or up the loss on the ground truth (False, BIM).
        alpha_levels: step size in levels.
        steps: a fixed number of iterations, or None for the Kurakin schedule.
    """

    shares_trajectories = True
    accepts_loss = True

    def __init__(self, targeted: bool = True, alpha_levels: float = 1.0, steps: int | None = None) -> None:
        super().__init__(alpha_levels, steps)
        self.targeted = bool(targeted)
        self.name = "ifgsm_targeted" if self.targeted else "ifgsm"

    def target(self, label: torch.Tensor, num_classes: int) -> torch.Tensor:
        if not self.targeted:
            return label
        if self.multi_label:  # every channel a binary label: each aims at its own inverse
            return torch.cat([inverse_mask(label[:, c : c + 1], 2) for c in range(label.shape[1])], dim=1)
        return inverse_mask(label, num_classes)

    def sweep(self, network, image, target, levels, *, intensity_range, max_batch=None, generator=None):
        lo_hi = (float(intensity_range[0]), float(intensity_range[1]))
        return iterative_fgsm_sweep(
            network,
            image,
            target,
            levels_to_epsilon(list(levels), lo_hi),
            alpha=levels_to_epsilon(self.alpha_levels, lo_hi),
            steps=self.step_counts(levels),
            targeted=self.targeted,
            loss_fn=self.loss_fn,
            clip_range=lo_hi,
            max_batch=max_batch,
        )


class FGSMSpec(AttackSpec):
    """One untargeted FGSM step of size eps per strength, from one input gradient per image (``"fgsm"``)."""

    name = "fgsm"
    shares_trajectories = True
    accepts_loss = True

    def step_counts(self, levels: Sequence[float]) -> list[int]:
        return [1 if e > 0 else 0 for e in levels]

    def describe(self, intensity_range: Sequence[float], seed: int | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "targeted": False,
            "target": "ground truth",
            "alpha_levels": None,
            "alpha": None,
            "steps": None,
            "seed": None,
        }

    def sweep(self, network, image, target, levels, *, intensity_range, max_batch=None, generator=None):
        lo_hi = (float(intensity_range[0]), float(intensity_range[1]))
        eps = levels_to_epsilon(list(levels), lo_hi)
        return fgsm_sweep(network, image, target, eps, loss_fn=self.loss_fn, clip_range=lo_hi, max_batch=max_batch)


class PGDSpec(_SteppedSpec):
    """Untargeted PGD from a uniform random start, each strength on its own (``"pgd"``).

    Args:
        alpha_levels: step size in levels.
        steps: a fixed number of iterations, or None for the Kurakin schedule.
    """

    name = "pgd"
    random = True
    norm = "linf"
    accepts_loss = True

    def _step_loss(self):
        return None

    def sweep(self, network, image, target, levels, *, intensity_range, max_batch=None, generator=None):
        lo_hi = (float(intensity_range[0]), float(intensity_range[1]))
        images, targets, epsilon, _ = repeat_for_sweep(image, target, levels_to_epsilon(list(levels), lo_hi))
        counts = torch.tensor(self.step_counts(levels), dtype=torch.long).repeat_interleave(image.shape[0])
        result = _iterate(
            network,
            images,
            targets,
            epsilon,
            alpha=levels_to_epsilon(self.alpha_levels, lo_hi),
            steps=counts,
            targeted=False,
            loss_fn=self.loss_fn,
            clip_range=lo_hi,
            random_start=True,
            generator=generator,
            step_loss=self._step_loss(),
            max_batch=max_batch,
            norm=self.norm,
        )
        return result.reshape(len(levels), *image.shape)


class SegPGDSpec(PGDSpec):
    """PGD with SegPGD's per-voxel loss weights (``"segpgd"``; multi-channel networks, class-index targets)."""

    name = "segpgd"
    accepts_loss = False  # its per-voxel weighted cross-entropy is the attack

    def target(self, label: torch.Tensor, num_classes: int) -> torch.Tensor:
        return class_indices(label)

    def check_network(self, channels: int) -> None:
        super().check_network(channels)
        if channels < 2:
            raise ValueError(f"attack='segpgd' needs a multi-channel network (C > 1); this one returns {channels}")

    def _step_loss(self):
        return segpgd_step_loss(targeted=False)


class PGDL2Spec(PGDSpec):
    """Untargeted L2 PGD from a uniform random start in the L2 ball, each strength on its own (``"pgd_l2"``).

    A strength of ``e`` levels is the L2 radius ``levels_to_epsilon(e) = e / 255 * (hi - lo)`` in input units,
    over all voxels and channels of a sample, and ``alpha_levels`` is the L2 length of a step the same way: the
    level keeps its unit (a 255th of the intensity range), only the norm changes. So 255 levels allow one voxel to
    move across the whole range, or every voxel of a ``d``-voxel image by ``(hi - lo) / sqrt(d)``; on [0, 1] a
    randomized-smoothing certificate at radius ``r`` is the strength ``255 r``. The Kurakin schedule (``steps``
    None) gives ``min(eps + 4, 1.25 eps)`` steps of ``alpha_levels``, as for the L-inf attacks.

    Args:
        alpha_levels: the L2 step length in levels.
        steps: a fixed number of iterations, or None for the Kurakin schedule.
    """

    name = "pgd_l2"
    norm = "l2"

    def describe(self, intensity_range: Sequence[float], seed: int | None) -> dict[str, Any]:
        return {
            **super().describe(intensity_range, seed),
            "norm": "l2",
            "epsilon_unit": "L2 radius over a sample's voxels and channels, levels / 255 * (hi - lo) in input units",
        }


class NoiseSpec(AttackSpec):
    """Uniform noise in the eps ball, one draw per image and strength (``"uniform_noise"``; no gradient).

    Args:
        alpha_levels, steps: accepted for the registry's common signature; must stay 1.0 / None.
    """

    name = "uniform_noise"
    random = True
    uses_loss = False

    def __init__(self, alpha_levels: float = 1.0, steps: int | None = None) -> None:
        if float(alpha_levels) != 1.0 or steps is not None:
            raise ValueError(
                f"attack 'uniform_noise' takes no steps: got alpha_levels={alpha_levels!r}, steps={steps!r}"
            )

    def step_counts(self, levels: Sequence[float]) -> list[int]:
        return [0 for _ in levels]

    def sweep(self, network, image, target, levels, *, intensity_range, max_batch=None, generator=None):
        lo_hi = (float(intensity_range[0]), float(intensity_range[1]))
        images, _, epsilon, _ = repeat_for_sweep(image, target, levels_to_epsilon(list(levels), lo_hi))
        return uniform_noise(images, epsilon, clip_range=lo_hi, generator=generator).reshape(len(levels), *image.shape)


class RandomSearchSpec(AttackSpec):
    """Score-based black-box search (Square-attack style, :func:`~monai_advseg.attacks.queries.random_search`).

    It reads only the network's outputs (softmax probability of the true class), ``queries`` forwards per image and
    strength (``"random_search"``).

    Args:
        queries: forwards per image and strength.
        p_init: the first window's share of the image.
        alpha_levels, steps: accepted for the registry's common signature; ``steps`` given sets ``queries``.
    """

    name = "random_search"
    random = True

    def __init__(self, queries: int = 300, p_init: float = 0.8, alpha_levels: float = 1.0, steps: int | None = None):
        self.queries = int(steps if steps is not None else queries)
        if self.queries < 0:
            raise ValueError(f"random_search: queries must be >= 0, got {self.queries!r}")
        self.p_init = float(p_init)

    def step_counts(self, levels: Sequence[float]) -> list[int]:
        return [0 for _ in levels]  # forwards only: no input gradient

    def describe(self, intensity_range: Sequence[float], seed: int | None) -> dict[str, Any]:
        return {**super().describe(intensity_range, seed), "queries": self.queries, "p_init": self.p_init}

    def sweep(self, network, image, target, levels, *, intensity_range, max_batch=None, generator=None):
        lo_hi = (float(intensity_range[0]), float(intensity_range[1]))
        images, labels, epsilon, _ = repeat_for_sweep(image, target, levels_to_epsilon(list(levels), lo_hi))
        result = random_search(
            network,
            images,
            labels,
            epsilon,
            queries=self.queries,
            clip_range=lo_hi,
            generator=generator,
            p_init=self.p_init,
            max_batch=max_batch,
        )
        return result.reshape(len(levels), *image.shape)


#: The built-in attacks by the names that bundles, command lines and reports use.
ATTACK_SPECS: dict[str, type[AttackSpec]] = {
    "ifgsm_targeted": IterativeFGSMSpec,
    "fgsm": FGSMSpec,
    "pgd": PGDSpec,
    "pgd_l2": PGDL2Spec,
    "segpgd": SegPGDSpec,
    "uniform_noise": NoiseSpec,
    "random_search": RandomSearchSpec,
    "worst_case": None,  # WorstCaseSpec, defined below
}


def build_attack_spec(
    attack: str | AttackSpec,
    alpha_levels: float = 1.0,
    steps: int | None = None,
    loss_fn: LossFn | None = None,
    multi_label: bool = False,
) -> AttackSpec:
    """The attack component for a name of :data:`ATTACK_SPECS`, or ``attack`` itself when it is a component.

    Args:
        attack: a registered name (near misses get a suggestion) or an object with the :class:`AttackSpec` interface.
        alpha_levels: step size in levels for the iterative attacks (FGSM has none: it must stay 1.0).
        steps: fixed iterations of the iterative attacks, None for the Kurakin schedule (FGSM: must be None).
        loss_fn: the loss a named single-loss attack (:attr:`~AttackSpec.accepts_loss`: ``ifgsm_targeted``,
            ``fgsm``, ``pgd``) follows instead of the summed cross-entropy, ``loss_fn(logits, target)``
            (a per-sample ``(B,)`` or scalar result); None keeps the attack's own.
        multi_label: the network's channels are independent sigmoid labels (:attr:`~AttackSpec.multi_label`): a
            named single-loss attack then follows ``loss_fn`` or, without one,
            :func:`~monai_advseg.attacks.per_channel_binary_cross_entropy`, and a targeted one aims at every
            channel's own inverse mask; the other named attacks refuse several channels at
            :meth:`~AttackSpec.check_network` (uniform noise excepted). A component is returned as it is.

    Returns:
        The component.

    Raises:
        ValueError: on an unknown name, ``alpha_levels`` / ``steps`` the attack's schedule cannot use, or a
            ``loss_fn`` for a component or for an attack with losses of its own.
    """
    spec = _build_attack_spec(attack, alpha_levels, steps)
    if loss_fn is not None:
        if not isinstance(attack, str):
            raise ValueError(f"loss_fn is for a named attack; give the loss to the component {attack!r} itself")
        if not spec.accepts_loss:
            takers = sorted(name for name, kind in ATTACK_SPECS.items() if getattr(kind, "accepts_loss", False))
            raise ValueError(
                f"attack {spec.name!r} has its own loss(es) and takes no loss_fn; the attacks that do: {takers}"
            )
        spec.loss_fn = loss_fn
    if multi_label and isinstance(attack, str):
        spec.multi_label = True
        if spec.accepts_loss and spec.loss_fn is None:
            spec.loss_fn = per_channel_binary_cross_entropy
    return spec


def _build_attack_spec(attack: str | AttackSpec, alpha_levels: float, steps: int | None) -> AttackSpec:
    if not isinstance(attack, str):
        missing = [m for m in ("sweep", "step_counts", "target", "describe") if not callable(getattr(attack, m, None))]
        if missing:
            raise ValueError(
                f"attack {attack!r} is neither a name of {sorted(ATTACK_SPECS)} nor an attack component "
                f"(it has no {', '.join(missing)})"
            )
        return attack
    from monai.utils import look_up_option  # keeps `import monai_advseg.attacks` torch-only

    try:
        spec = look_up_option(attack, ATTACK_SPECS)
    except ValueError as error:  # MONAI's message spans lines and suggests the nearest name; keep it, on one line
        raise ValueError(f"unknown attack {attack!r}: {' '.join(str(error).split())}") from None
    if spec is FGSMSpec:
        if float(alpha_levels) != 1.0:
            raise ValueError(
                f"alpha_levels={alpha_levels!r}: attack 'fgsm' takes one step of size eps, it has no alpha"
            )
        if steps is not None:
            raise ValueError(f"steps={steps!r}: attack 'fgsm' takes exactly one step")
        return FGSMSpec()
    if spec is WorstCaseSpec:  # steps: the APGD members' iterations (their default when None)
        return (
            WorstCaseSpec(alpha_levels=alpha_levels)
            if steps is None
            else WorstCaseSpec(alpha_levels=alpha_levels, apgd_steps=steps)
        )
    return spec(alpha_levels=alpha_levels, steps=steps)


# ----------------------------------------------------------------------------------------------- the worst case
#: A scorer from the evaluator: ``scorer(logits, label) -> (n,)`` Dice per sample (NaN for a case without a scored
#: class) and ``foreground(logits) -> (n,)``, the share of voxels predicted as foreground.
Scorer = Callable[[torch.Tensor, torch.Tensor], dict]

#: The ensemble of ``attack="worst_case"``: SEA's four APGD losses, the NLCE paper's attack and SegPGD.
WORST_CASE_MEMBERS: tuple[str, ...] = (
    "ifgsm_targeted",
    "apgd_masked_ce",
    "apgd_balanced_ce",
    "apgd_js",
    "apgd_spherical",
    "segpgd",
)


_MULTI_CHANNEL_MEMBERS = ("segpgd", "apgd_balanced_ce")


def _sample_generators(seed: int, member: str, images: torch.Tensor, levels: torch.Tensor) -> list[torch.Generator]:
    """One generator per sample, seeded by the run's seed, the member and the sample itself (its image's bytes and its
    strength), so that a sample's random start does not depend on its batch, its batch-mates or ``max_batch``."""
    generators = []
    for image, level in zip(images, levels.tolist(), strict=True):
        content = zlib.crc32(image.detach().cpu().contiguous().numpy().tobytes())
        key = zlib.crc32(f"{seed}/{member}/{level!r}/{content}".encode())
        generators.append(torch.Generator().manual_seed(key))
    return generators


class WorstCaseSpec(AttackSpec):
    """Per image and strength, the lowest Dice over an ensemble of attacks (``"worst_case"``).

    Members (:data:`WORST_CASE_MEMBERS`): the NLCE paper's targeted I-FGSM (Kurakin steps, shared trajectories), APGD
    with each of SEA's losses (masked cross-entropy, SegPGD's balanced cross-entropy, Jensen-Shannon, masked
    spherical; ``apgd_steps`` iterations from a random start), and SegPGD (Kurakin steps). Every member returns its
    best iterate by the Dice itself, not by its loss. ROG-style budget: a sample whose worst Dice is already at or
    below ``threshold`` is not attacked by the remaining members. Random starts come from one generator per sample,
    seeded by ``seed``, the member and the sample's own content, so the result does not depend on the batch or on
    ``max_batch`` (nor on the number of DDP ranks). For a case without foreground (Dice undefined) the score is minus
    its predicted-foreground share.

    Args:
        members: names of :data:`WORST_CASE_MEMBERS` to use, in order (cheapest first pays off with the early stop).
        apgd_steps: iterations of each APGD member (SEA uses 300, ROG 100; 20 keeps the CXR validation split at 96x96
            over the 18 paper strengths well within an hour on 2 CPU cores).
        segpgd_steps: iterations of SegPGD; None = the Kurakin schedule.
        threshold: Dice at or below which a sample counts as broken (0.0 .. 1.0).
        alpha_levels: step of the I-FGSM and SegPGD members, in levels.

    Raises:
        ValueError: on an empty or unknown member list, ``apgd_steps`` < 1 or a threshold outside [0, 1].
    """

    name = "worst_case"
    random = True
    uses_scorer = True
    diagnostics = True

    def __init__(
        self,
        members: Sequence[str] = WORST_CASE_MEMBERS,
        apgd_steps: int = 20,
        segpgd_steps: int | None = None,
        threshold: float = 0.0,
        alpha_levels: float = 1.0,
    ) -> None:
        members = list(members)
        if not members:
            raise ValueError("worst_case: the ensemble is empty; give at least one of " + ", ".join(WORST_CASE_MEMBERS))
        unknown = [m for m in members if m not in WORST_CASE_MEMBERS]
        if unknown:
            raise ValueError(f"worst_case: unknown members {unknown}; choose from {list(WORST_CASE_MEMBERS)}")
        if isinstance(apgd_steps, bool) or not isinstance(apgd_steps, int) or apgd_steps < 1:
            raise ValueError(f"worst_case: apgd_steps must be an int >= 1, got {apgd_steps!r}")
        if not (isinstance(threshold, (int, float)) and 0.0 <= float(threshold) <= 1.0):
            raise ValueError(f"worst_case: threshold must be in [0, 1], got {threshold!r}")
        self.members = members
        self.apgd_steps = apgd_steps
        self.threshold = float(threshold)
        self.stepped = _SteppedSpec(alpha_levels, _check_steps(segpgd_steps))
        self.paper = _SteppedSpec(alpha_levels, None)
        self.seed = 0
        self.details: dict[str, Any] = {}
        self._channels = 2

    def target(self, label: torch.Tensor, num_classes: int) -> torch.Tensor:
        # Every member compares with the truth (I-FGSM derives its inverse mask); SegPGD needs class indices.
        return class_indices(label)

    def check_network(self, channels: int) -> None:
        # SegPGD's weighting needs class logits; a 1-channel (sigmoid) network skips those members (recorded).
        super().check_network(channels)
        self._channels = channels

    def member_steps(self, member: str, levels: Sequence[float]) -> list[int]:
        """Gradient steps of one member per strength (each APGD member: ``apgd_steps`` at every positive eps)."""
        if member.startswith("apgd_"):
            return [self.apgd_steps if e > 0 else 0 for e in levels]
        return (self.paper if member == "ifgsm_targeted" else self.stepped).step_counts(levels)

    def step_counts(self, levels: Sequence[float]) -> list[int]:
        """The ensemble's steps per strength if no sample stops early (the cost printed before a run)."""
        per_member = [self.member_steps(m, levels) for m in self.members]
        return [sum(column) for column in zip(*per_member, strict=True)]

    def describe(self, intensity_range: Sequence[float], seed: int | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "targeted": False,
            "target": "per member: inverse_mask for ifgsm_targeted, the ground truth for the others",
            "members": list(self.members),
            "apgd_steps": self.apgd_steps,
            "segpgd_steps": "kurakin" if self.stepped.steps is None else self.stepped.steps,
            "alpha_levels": self.stepped.alpha_levels,
            "alpha": levels_to_epsilon(self.stepped.alpha_levels, tuple(intensity_range)),
            "threshold": self.threshold,
            "seed": seed,
            "selection": "lowest Dice per case and eps; each member returns its best iterate by Dice",
        }

    def sweep(
        self,
        network,
        image,
        target,
        levels,
        *,
        intensity_range,
        max_batch=None,
        generator=None,
        scorer: Scorer | None = None,
        seed: int | None = None,
        num_classes: int = 2,
    ):
        if scorer is None:
            raise ValueError("worst_case needs the evaluator's scorer (Dice per sample) to pick the worst case")
        lo_hi = (float(intensity_range[0]), float(intensity_range[1]))
        seed = self.seed if seed is None else int(seed)
        images, labels, epsilon, source = repeat_for_sweep(image, target, levels_to_epsilon(list(levels), lo_hi))
        level_of = torch.tensor([float(e) for e in levels], dtype=torch.float64).repeat_interleave(image.shape[0])
        count = images.shape[0]

        def score(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            values = scorer(logits, labels[rows.to(labels.device)])
            dice, foreground = values["dice"].double(), values["foreground"].double()
            return torch.where(torch.isfinite(dice), dice, -foreground)

        # the strengths' copies of an image are one image: its clean score is forwarded once
        clean = score(forward_in_chunks(network, image, max_batch), torch.arange(image.shape[0])).cpu()
        worst_score = clean.repeat(len(levels))

        worst = images.clone()
        winner = torch.full((count,), -1, dtype=torch.long)
        member_scores = {m: torch.full((count,), float("nan"), dtype=torch.float64) for m in self.members}
        attacked = level_of > 0
        skipped = [m for m in self.members if self._channels < 2 and m in _MULTI_CHANNEL_MEMBERS]
        for number, member in enumerate(self.members):
            if member in skipped:
                continue
            rows = torch.nonzero(attacked & (worst_score > self.threshold)).flatten()
            if rows.numel() == 0:
                break
            index = rows.to(images.device)
            steps = torch.tensor(self.member_steps(member, levels), dtype=torch.long).repeat_interleave(image.shape[0])[
                rows
            ]
            generators = _sample_generators(seed, member, images[index], level_of[rows])
            scores = torch.empty(rows.numel(), dtype=torch.float64)  # the returned iterates': no forward again
            result = self._run_member(
                member,
                network,
                images[index],
                labels[index],
                epsilon[rows],
                steps,
                source[rows],
                lo_hi,
                max_batch,
                generators,
                lambda logits, local, rows=rows: score(logits, rows[local.cpu()]),
                num_classes,
                scores,
            )
            member_scores[member][rows] = scores
            better = scores < worst_score[rows]
            if bool(better.any()):
                improved = rows[better]
                worst[improved.to(worst.device)] = result[better.to(result.device)]
                worst_score[improved] = scores[better]
                winner[improved] = number
        self.details = {
            "winner": [self.members[w] if w >= 0 else None for w in winner.tolist()],
            "member_scores": member_scores,
            "score": worst_score,
            "samples_attacked": {m: int(torch.isfinite(member_scores[m]).sum()) for m in self.members},
            "skipped": skipped,
        }
        return worst.reshape(len(levels), *image.shape)

    def _run_member(
        self,
        member,
        network,
        images,
        labels,
        epsilon,
        steps,
        source,
        lo_hi,
        max_batch,
        generators,
        score,
        num_classes,
        best_scores,
    ):
        from monai_advseg.attacks.apgd import apgd  # apgd imports this module's siblings only

        alpha = levels_to_epsilon(self.stepped.alpha_levels, lo_hi)
        if member == "ifgsm_targeted":
            return _iterate(
                network,
                images,
                inverse_mask(labels, num_classes),
                epsilon,
                alpha=alpha,
                steps=steps,
                targeted=True,
                loss_fn=None,
                clip_range=lo_hi,
                share=source,
                max_batch=max_batch,
                score_fn=score,
                best_scores=best_scores,
            )
        if member == "segpgd":
            return _iterate(
                network,
                images,
                labels,
                epsilon,
                alpha=alpha,
                steps=steps,
                targeted=False,
                loss_fn=None,
                clip_range=lo_hi,
                random_start=True,
                generator=generators,
                step_loss=segpgd_step_loss(),
                max_batch=max_batch,
                score_fn=score,
                best_scores=best_scores,
            )
        return apgd(
            network,
            images,
            labels,
            epsilon,
            steps=steps,
            loss=member[len("apgd_") :],
            clip_range=lo_hi,
            generator=generators,
            score_fn=score,
            max_batch=max_batch,
            best_scores=best_scores,
        )


ATTACK_SPECS["worst_case"] = WorstCaseSpec
