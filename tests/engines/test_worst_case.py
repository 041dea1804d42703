"""attack="worst_case": the lowest Dice over the ensemble per case and eps; deterministic, batch-independent."""

from __future__ import annotations

import pytest
import torch
from tiny_models import disk_batch, trained_small_unet
from torch import nn

from monai_advseg.attacks import WorstCaseSpec
from monai_advseg.engines import RobustnessEvaluator

LEVELS = [4, 16]
MEMBERS = ["ifgsm_targeted", "apgd_masked_ce", "apgd_js", "segpgd"]


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return trained_small_unet()


@pytest.fixture(scope="module")
def data():
    return disk_batch(4, seed=60)


def _loader(images, labels, batch):
    return [{"image": images[i : i + batch], "label": labels[i : i + batch]} for i in range(0, len(images), batch)]


def _dice(evaluator: RobustnessEvaluator) -> dict[tuple[str, float], float]:
    return {(c["case"], c["eps_levels"]): c["dice"] for c in evaluator.results["cases"] if c["setting"] == "attack"}


def _run(network, images, labels, batch=4, max_batch=None, **spec):
    attack = WorstCaseSpec(apgd_steps=6, segpgd_steps=6, **spec)
    evaluator = RobustnessEvaluator(
        "cpu",
        _loader(images, labels, batch),
        network,
        epsilons=LEVELS,
        attack=attack,
        max_batch=max_batch,
        seed=7,
        diagnostics=False,  # these tests are about the ensemble; tests/engines/test_diagnostics.py covers them
        progress=False,
    )
    evaluator.run()
    return evaluator


@pytest.fixture(scope="module")
def ensemble(trained, data):
    return _run(trained, *data, members=MEMBERS)


def test_worst_case_is_at_most_every_member_alone(trained, data, ensemble):
    worst = _dice(ensemble)
    for member in MEMBERS:
        alone = _dice(_run(trained, *data, members=[member]))
        assert all(worst[key] <= alone[key] + 1e-6 for key in worst), member
    # and every case records which member won, with that member's score being the worst case
    for case in ensemble.results["cases"]:
        if case["setting"] == "attack" and case["attack"] is not None:
            assert case[f"dice_{case['attack']}"] == pytest.approx(case["dice"], abs=1e-6)
    rows = ensemble.results["metrics"][1:]
    assert all(sum(row[f"wins_{m}"] for m in MEMBERS) <= len(data[0]) for row in rows)
    assert ensemble.results["attack"]["members"] == MEMBERS


def test_independent_of_batch_composition_and_max_batch(trained, data, ensemble):
    other = _run(trained, *data, batch=3, max_batch=5, members=MEMBERS)
    assert _dice(other) == _dice(ensemble)


def test_deterministic_given_the_seed(trained, data, ensemble):
    assert _dice(_run(trained, *data, members=MEMBERS)) == _dice(ensemble)


def test_early_stop_skips_broken_cases(trained, data, ensemble):
    # every member attacked every (eps, case) sample: no clean or attacked Dice fell to the default threshold 0
    counts = ensemble.attack_spec.details["samples_attacked"]
    assert counts == {m: len(LEVELS) * len(data[0]) for m in MEMBERS}
    # a threshold above every clean Dice counts every case as broken already: no member runs, Dice stays clean
    stopped = _run(trained, *data, members=["apgd_js", "apgd_masked_ce"], threshold=0.999)
    assert stopped.attack_spec.details["samples_attacked"] == {"apgd_js": 0, "apgd_masked_ce": 0}
    clean = {c["case"]: c["dice"] for c in stopped.results["cases"] if c["setting"] == "clean"}
    assert all(value == clean[case] for (case, _), value in _dice(stopped).items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"members": []}, "ensemble is empty"),
        ({"members": ["apgd_hinge"]}, "unknown members"),
        ({"threshold": 1.5}, "threshold"),
        ({"apgd_steps": 0}, "apgd_steps"),
    ],
)
def test_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorstCaseSpec(**kwargs)


def test_one_hot_labels_give_the_same_worst_case(trained, data, ensemble):
    images, labels = data
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 2).movedim(-1, 1).float()
    assert _dice(_run(trained, images, one_hot, members=MEMBERS)) == _dice(ensemble)


def test_the_run_prints_its_cost_before_it_starts_without_a_progress_bar(trained, data, capsys):
    # a bundle run whose stderr is no terminal has no progress bar; it printed no cost either
    _run(trained, *data, members=["apgd_js"], threshold=0.999)  # every case counts as broken: nothing is attacked
    err = capsys.readouterr().err
    assert "robustness worst_case: at most 12 forward + input-backward passes per image over 2 eps" in err
