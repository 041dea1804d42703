"""The cases of a robustness sweep's example gallery, kept while the sweep runs.

:class:`RobustnessGalleryCollector` is an ignite handler: after every iteration of a
:class:`~monai_advseg.engines.RobustnessEvaluator` it keeps, for the first :data:`GALLERY_CASES` cases, the image,
the truth, the clean prediction and the adversarial images and predictions at the :func:`gallery_levels`, all as
numpy arrays on the CPU, in ``engine.state.robustness_gallery``
(drawn by :func:`~monai_advseg.handlers.report_card.plot_gallery`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

from monai_advseg.attacks.scoring import label_map, predicted_label_map
from monai_advseg.attacks.targets import class_indices

__all__ = [
    "GALLERY_CASES",
    "GalleryCollector",
    "RobustnessGalleryCollector",
    "gallery_array",
    "gallery_levels",
]

#: Cases whose images the gallery keeps (the first ones the sweep sees; bounded memory).
GALLERY_CASES = 3


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


def gallery_array(image: torch.Tensor) -> Any:
    """A kept case's tensor as a float numpy array on the CPU (a MONAI ``MetaTensor`` as a plain one)."""
    return image.detach().as_subclass(torch.Tensor).cpu().float().numpy()


class GalleryCollector:
    """Base of the gallery collectors: an ignite handler keeping the first ``cases`` cases an engine's iterations
    output, as dicts of numpy arrays, in the list ``engine.state.<state_key>`` (emptied when an epoch starts).

    A subclass sets ``state_key`` and turns the first ``take`` cases of the iteration output into the gallery's dicts
    (:meth:`keep`).

    Args:
        cases: how many cases to keep.
    """

    state_key = ""

    def __init__(self, cases: int = GALLERY_CASES) -> None:
        self.cases = cases

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self, engine: Engine) -> None:
        setattr(engine.state, self.state_key, [])

    def __call__(self, engine: Engine) -> None:
        gallery: list[dict[str, Any]] = getattr(engine.state, self.state_key)
        take = min(engine.state.output["image"].shape[0], self.cases - len(gallery))
        if take > 0:
            gallery.extend(self.keep(engine, engine.state.output, take))

    def keep(self, engine: Engine, output: dict[str, Any], take: int) -> list[dict[str, Any]]:
        """The gallery's dicts of the first ``take`` cases of the iteration ``output``."""
        raise NotImplementedError


class RobustnessGalleryCollector(GalleryCollector):
    """Keep the first cases of a sweep for the example gallery (``engine.state.robustness_gallery``).

    The engine must provide ``epsilon_levels`` and ``predict_logits(image)`` and put ``image``, ``label``, ``pred``
    (clean logits) and ``adversarial`` (``(E, B, C, *spatial)``) in its iteration output, as
    :class:`~monai_advseg.engines.RobustnessEvaluator` does. The adversarial predictions of the kept cases are
    computed here (at most ``cases`` x 3 forwards per run). An engine whose ``multi_label`` is True (independent
    sigmoid channels) gets each truth and prediction drawn as the :func:`~monai_advseg.attacks.label_map` of its
    channels (each channel ``sigmoid >= 0.5``, as its scorer counts them), not as an argmax.

    Args:
        cases: how many cases to keep.
    """

    state_key = "robustness_gallery"

    def keep(self, engine: Engine, output: dict[str, Any], take: int) -> list[dict[str, Any]]:
        levels = gallery_levels(engine.epsilon_levels)
        if not levels:
            return []
        columns = [engine.epsilon_levels.index(e) for e in levels]
        adversarial = [output["adversarial"][c, :take].detach() for c in columns]
        multi_label = getattr(engine, "multi_label", False)
        predictions = [predicted_label_map(engine.predict_logits(i), multi_label).cpu() for i in adversarial]
        label = output["label"][:take]
        truth = label_map(label) if multi_label else class_indices(label)[:, 0]
        clean = predicted_label_map(output["pred"][:take], multi_label).cpu()
        return [
            {
                "image": gallery_array(output["image"][b]),
                "label": truth[b].detach().cpu().long().numpy(),
                "clean_prediction": clean[b].numpy(),
                "eps_levels": list(levels),
                "adversarial": [gallery_array(images[b]) for images in adversarial],
                "adversarial_prediction": [p[b].numpy() for p in predictions],
            }
            for b in range(take)
        ]
