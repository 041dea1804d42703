"""Progress bars of the evaluators, each with the run's estimated cost printed first: a robustness sweep's strengths
x batches (:class:`SweepProgressBar`) and a certified evaluation's batches (:class:`CertificationProgressBar`)."""

from __future__ import annotations

import sys

from ignite.engine import Engine, Events

__all__ = ["CertificationProgressBar", "SweepProgressBar"]


class _CostedProgressBar:
    """tqdm bar over an evaluation epoch, the cost printed to stderr before it starts (so a user sees the cost before
    waiting for it). A subclass says what one batch costs and how many ticks it is (:meth:`plan`).

    Args:
        show: True always, None only on a terminal (tqdm's ``disable=None``), False never (the cost is still printed).
    """

    def __init__(self, show: bool | None = None) -> None:
        self.show = show
        self.bar = None
        self.ticks = 1

    def plan(self, engine: Engine) -> tuple[str, str, int, str]:
        """``(description, unit, ticks per batch, cost line)`` of the engine's run."""
        raise NotImplementedError

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.close)

    def start(self, engine: Engine) -> None:
        from tqdm.auto import tqdm

        description, unit, self.ticks, cost = self.plan(engine)
        print(cost, file=sys.stderr)
        if self.show is False:
            return
        length = engine.state.epoch_length
        self.bar = tqdm(
            total=None if length is None else length * self.ticks,
            desc=description,
            unit=unit,
            disable=None if self.show is None else False,
        )

    def update(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.update(self.ticks)

    def close(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SweepProgressBar(_CostedProgressBar):
    """tqdm bar of a :class:`~monai_advseg.engines.RobustnessEvaluator` run (one tick per strength and batch).

    Before the run it prints to stderr how many forward + input-backward passes the attack takes per image (from the
    engine's ``step_counts()``), so a user sees the cost before waiting for it — also without a bar.

    Args:
        show: True always, None only on a terminal (tqdm's ``disable=None``), False never (the cost is still printed).
    """

    def plan(self, engine: Engine) -> tuple[str, str, int, str]:
        steps = engine.step_counts()
        cost = (
            f"robustness {engine.attack}: at most {sum(steps)} forward + input-backward passes per image over "
            f"{len(steps)} eps (per eps: {steps}), plus {1 + len(steps)} scoring forwards"
        )
        return f"robustness {engine.attack}", "eps-batch", len(engine.epsilon_levels), cost


class CertificationProgressBar(_CostedProgressBar):
    """tqdm bar of a :class:`~monai_advseg.engines.CertificationEvaluator` run (one tick per batch).

    Before the run it prints to stderr the noisy forwards per image (``n0 + n``) and, with the attack, its steps and
    the smoothed model's forwards at each attacked radius.

    Args:
        show: True always, None only on a terminal (tqdm's ``disable=None``).
    """

    def plan(self, engine: Engine) -> tuple[str, str, int, str]:
        passes = engine.n0 + engine.n
        cost = f"certify: {passes} noisy forwards per image (n0 {engine.n0} + n {engine.n}, sigma {engine.sigma:g})"
        if engine.attack_radii:
            cost += (
                f", plus L2 PGD ({engine.attack_steps} steps) and {passes} forwards at each of "
                f"{len(engine.attack_radii)} radii"
            )
        return "certify", "batch", 1, cost
