"""A progress bar over a robustness sweep's strengths x batches, with the sweep's estimated cost printed first."""

from __future__ import annotations

import sys

from ignite.engine import Engine, Events

__all__ = ["SweepProgressBar"]


class SweepProgressBar:
    """tqdm bar of a :class:`~monai_advseg.engines.RobustnessEvaluator` run (one tick per strength and batch).

    Before the run it prints to stderr how many forward + input-backward passes the attack takes per image (from the
    engine's ``step_counts()``), so a user sees the cost before waiting for it.

    Args:
        show: True always, None only on a terminal (tqdm's ``disable=None``).
    """

    def __init__(self, show: bool | None = None) -> None:
        self.show = show
        self.bar = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.close)

    def start(self, engine: Engine) -> None:
        from tqdm.auto import tqdm

        steps = engine.step_counts()
        print(
            f"robustness {engine.attack}: at most {sum(steps)} forward + input-backward passes per image over "
            f"{len(steps)} eps (per eps: {steps}), plus {1 + len(steps)} scoring forwards",
            file=sys.stderr,
        )
        length = engine.state.epoch_length
        self.bar = tqdm(
            total=None if length is None else length * len(steps),
            desc=f"robustness {engine.attack}",
            unit="eps-batch",
            disable=None if self.show is None else False,
        )

    def update(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.update(len(engine.epsilon_levels))

    def close(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
