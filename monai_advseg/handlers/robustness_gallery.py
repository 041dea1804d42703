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

__all__ = ["GALLERY_CASES", "RobustnessGalleryCollector", "gallery_levels", "predicted_labels"]

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


def predicted_labels(logits: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` logits -> ``(B, *spatial)`` class indices (argmax; ``sigmoid >= 0.5`` for one channel)."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits.float()) >= 0.5).long()[:, 0]
    return logits.argmax(dim=1)


class RobustnessGalleryCollector:
    """Keep the first cases of a sweep for the example gallery (``engine.state.robustness_gallery``).

    The engine must provide ``epsilon_levels`` and ``predict_logits(image)`` and put ``image``, ``label``, ``pred``
    (clean logits) and ``adversarial`` (``(E, B, C, *spatial)``) in its iteration output, as
    :class:`~monai_advseg.engines.RobustnessEvaluator` does. The adversarial predictions of the kept cases are
    computed here (at most ``cases`` x 3 forwards per run).

    Args:
        cases: how many cases to keep.
    """

    def __init__(self, cases: int = GALLERY_CASES) -> None:
        self.cases = cases

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self, engine: Engine) -> None:
        engine.state.robustness_gallery = []

    def __call__(self, engine: Engine) -> None:
        gallery: list[dict[str, Any]] = engine.state.robustness_gallery
        output = engine.state.output
        levels = gallery_levels(engine.epsilon_levels)
        take = min(output["image"].shape[0], self.cases - len(gallery))
        if take <= 0 or not levels:
            return
        columns = [engine.epsilon_levels.index(e) for e in levels]
        adversarial = [output["adversarial"][c, :take].detach() for c in columns]
        predictions = [predicted_labels(engine.predict_logits(images)).cpu() for images in adversarial]
        label = output["label"]
        truth = label[:, 0] if label.shape[1] == 1 else label.argmax(dim=1)
        clean = predicted_labels(output["pred"][:take]).cpu()
        for b in range(take):
            gallery.append(
                {
                    "image": _array(output["image"][b]),
                    "label": truth[b].detach().cpu().long().numpy(),
                    "clean_prediction": clean[b].numpy(),
                    "eps_levels": list(levels),
                    "adversarial": [_array(images[b]) for images in adversarial],
                    "adversarial_prediction": [p[b].numpy() for p in predictions],
                }
            )


def _array(image: torch.Tensor) -> Any:
    return image.detach().as_subclass(torch.Tensor).cpu().float().numpy()
