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
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from monai_advseg.attacks.iterative import _iterate, segpgd_step_loss
from monai_advseg.attacks.schedule import kurakin_steps_for, levels_to_epsilon
from monai_advseg.attacks.sweep import fgsm_sweep, iterative_fgsm_sweep, repeat_for_sweep
from monai_advseg.attacks.targets import inverse_mask

__all__ = [
    "ATTACK_SPECS",
    "AttackSpec",
    "FGSMSpec",
    "IterativeFGSMSpec",
    "PGDSpec",
    "SegPGDSpec",
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
    """

    name: str = "custom"
    targeted: bool = False
    random: bool = False
    shares_trajectories: bool = False

    def target(self, label: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The label the attack loss compares with (default: the ground truth itself)."""
        return label

    def step_counts(self, levels: Sequence[float]) -> list[int]:
        """Gradient steps per strength (0 at strength 0); the evaluator shares its attack time by them."""
        raise NotImplementedError

    def check_network(self, channels: int) -> None:
        """Raise ``ValueError`` when the attack cannot run on a network returning ``channels`` channels."""

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

    def __init__(self, targeted: bool = True, alpha_levels: float = 1.0, steps: int | None = None) -> None:
        super().__init__(alpha_levels, steps)
        self.targeted = bool(targeted)
        self.name = "ifgsm_targeted" if self.targeted else "ifgsm"

    def target(self, label: torch.Tensor, num_classes: int) -> torch.Tensor:
        return inverse_mask(label, num_classes) if self.targeted else label

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
            clip_range=lo_hi,
            max_batch=max_batch,
        )


class FGSMSpec(AttackSpec):
    """One untargeted FGSM step of size eps per strength, from one input gradient per image (``"fgsm"``)."""

    name = "fgsm"
    shares_trajectories = True

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
        return fgsm_sweep(network, image, target, eps, clip_range=lo_hi, max_batch=max_batch)


class PGDSpec(_SteppedSpec):
    """Untargeted PGD from a uniform random start, each strength on its own (``"pgd"``).

    Args:
        alpha_levels: step size in levels.
        steps: a fixed number of iterations, or None for the Kurakin schedule.
    """

    name = "pgd"
    random = True

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
            loss_fn=None,
            clip_range=lo_hi,
            random_start=True,
            generator=generator,
            step_loss=self._step_loss(),
            max_batch=max_batch,
        )
        return result.reshape(len(levels), *image.shape)


class SegPGDSpec(PGDSpec):
    """PGD with SegPGD's per-voxel loss weights (``"segpgd"``; multi-channel networks, class-index targets)."""

    name = "segpgd"

    def target(self, label: torch.Tensor, num_classes: int) -> torch.Tensor:
        return label.argmax(dim=1, keepdim=True) if label.shape[1] != 1 else label

    def check_network(self, channels: int) -> None:
        if channels < 2:
            raise ValueError(f"attack='segpgd' needs a multi-channel network (C > 1); this one returns {channels}")

    def _step_loss(self):
        return segpgd_step_loss(targeted=False)


#: The built-in attacks by the names that bundles, command lines and reports use.
ATTACK_SPECS: dict[str, type[AttackSpec]] = {
    "ifgsm_targeted": IterativeFGSMSpec,
    "fgsm": FGSMSpec,
    "pgd": PGDSpec,
    "segpgd": SegPGDSpec,
}


def build_attack_spec(attack: str | AttackSpec, alpha_levels: float = 1.0, steps: int | None = None) -> AttackSpec:
    """The attack component for a name of :data:`ATTACK_SPECS`, or ``attack`` itself when it is a component.

    Args:
        attack: a registered name (near misses get a suggestion) or an object with the :class:`AttackSpec` interface.
        alpha_levels: step size in levels for the iterative attacks (FGSM has none: it must stay 1.0).
        steps: fixed iterations of the iterative attacks, None for the Kurakin schedule (FGSM: must be None).

    Returns:
        The component.

    Raises:
        ValueError: on an unknown name, or ``alpha_levels`` / ``steps`` the attack's schedule cannot use.
    """
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
    return spec(alpha_levels=alpha_levels, steps=steps)
