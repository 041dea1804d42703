"""The attack core's public signatures, pinned as issue 2 lists them: names, order, keyword-only parts and defaults.

Annotations are not pinned (they are documentation); a renamed, reordered or newly positional parameter, or a changed
default, breaks bundle configs and user code and must fail here.
"""

from __future__ import annotations

import inspect

import pytest

import monai_advseg.attacks as attacks

P, K = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
REQUIRED = inspect.Parameter.empty
ATTACK_ARGS = [("network", P, REQUIRED), ("image", P, REQUIRED), ("label", P, REQUIRED), ("epsilon", P, REQUIRED)]

SIGNATURES = {
    # fgsm(network, image, label, epsilon, *, loss_fn=None, clip_range=None, targeted=False)
    "fgsm": [*ATTACK_ARGS, ("loss_fn", K, None), ("clip_range", K, None), ("targeted", K, False)],
    # inverse_fgsm(network, image, label, epsilon, *, loss_fn=None, clip_range=None)
    "inverse_fgsm": [*ATTACK_ARGS, ("loss_fn", K, None), ("clip_range", K, None)],
    # fgsm_pair(...): the arguments of inverse_fgsm, both images from one gradient
    "fgsm_pair": [*ATTACK_ARGS, ("loss_fn", K, None), ("clip_range", K, None)],
    # iterative_fgsm(network, image, label, epsilon, *, alpha, steps=None, targeted=False, loss_fn=None,
    #                clip_range=None)
    "iterative_fgsm": [
        *ATTACK_ARGS,
        ("alpha", K, REQUIRED),
        ("steps", K, None),
        ("targeted", K, False),
        ("loss_fn", K, None),
        ("clip_range", K, None),
    ],
    # pgd(network, image, label, epsilon, *, alpha, steps, random_start=True, generator=None, loss_fn=None,
    #     clip_range=None, targeted=False)
    "pgd": [
        *ATTACK_ARGS,
        ("alpha", K, REQUIRED),
        ("steps", K, REQUIRED),
        ("random_start", K, True),
        ("generator", K, None),
        ("loss_fn", K, None),
        ("clip_range", K, None),
        ("targeted", K, False),
    ],
    # pgd_l2(network, image, label, epsilon, *, alpha, steps, random_start=True, generator=None, loss_fn=None,
    #        clip_range=None, targeted=False): pgd's signature, epsilon and alpha as L2 lengths (issue 15)
    "pgd_l2": [
        *ATTACK_ARGS,
        ("alpha", K, REQUIRED),
        ("steps", K, REQUIRED),
        ("random_start", K, True),
        ("generator", K, None),
        ("loss_fn", K, None),
        ("clip_range", K, None),
        ("targeted", K, False),
    ],
    # kurakin_steps(levels)
    "kurakin_steps": [("levels", P, REQUIRED)],
    # inverse_mask(label, num_classes); background_target is an optional extension with a default
    "inverse_mask": [("label", P, REQUIRED), ("num_classes", P, REQUIRED), ("background_target", P, 1)],
    # levels_to_epsilon(levels, intensity_range)
    "levels_to_epsilon": [("levels", P, REQUIRED), ("intensity_range", P, REQUIRED)],
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_public_signature_is_pinned(name):
    assert name in attacks.__all__
    parameters = inspect.signature(getattr(attacks, name)).parameters.values()
    assert [(p.name, p.kind, p.default) for p in parameters] == SIGNATURES[name]
