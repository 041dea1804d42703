"""The evaluators' progress bars print the run's cost before it starts and tick once per strength (sweep) or batch."""

import torch
from ignite.engine import Engine

from monai_advseg.handlers import CertificationProgressBar, SweepProgressBar


def _engine(**attributes) -> Engine:
    engine = Engine(lambda engine, batch: batch)
    for name, value in attributes.items():
        setattr(engine, name, value)
    return engine


def test_the_certification_bar_prints_the_noisy_forwards_and_the_attack(capsys):
    engine = _engine(n0=4, n=16, sigma=0.25, attack_radii=[0.5, 1.0], attack_steps=7)
    bar = CertificationProgressBar(show=True)
    bar.attach(engine)
    engine.run([torch.zeros(1)] * 3)
    err = capsys.readouterr().err
    assert err.startswith(
        "certify: 20 noisy forwards per image (n0 4 + n 16, sigma 0.25), plus L2 PGD (7 steps) and 20 forwards at "
        "each of 2 radii\n"
    )
    assert "3/3" in err and bar.bar is None  # one tick per batch, closed at the end


def test_the_sweep_bar_ticks_once_per_strength_and_batch(capsys):
    engine = _engine(attack="pgd", epsilon_levels=[2.0, 4.0], step_counts=lambda: [3, 5])
    SweepProgressBar(show=True).attach(engine)
    engine.run([torch.zeros(1)] * 2)
    err = capsys.readouterr().err
    assert err.startswith("robustness pgd: at most 8 forward + input-backward passes per image over 2 eps (per eps")
    assert "4/4" in err
