"""The cases of a certified evaluation's gallery, kept while the evaluation runs.

:class:`CertificationGalleryCollector` is an ignite handler: after every iteration of a
:class:`~monai_advseg.engines.CertificationEvaluator` it keeps, for the first
:data:`~monai_advseg.handlers.GALLERY_CASES` cases, the image, the truth, the smoothed model's certified classes and
certified radii, all as numpy arrays on the CPU, in ``engine.state.certification_gallery`` (drawn by
:func:`~monai_advseg.handlers.plot_certified_gallery`).
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine

from monai_advseg.attacks.targets import class_indices
from monai_advseg.handlers.robustness_gallery import GalleryCollector, gallery_array

__all__ = ["CertificationGalleryCollector"]


class CertificationGalleryCollector(GalleryCollector):
    """Keep the first cases of a certified evaluation for its gallery (``engine.state.certification_gallery``).

    The engine's iteration output must hold ``image``, ``label`` (class indices or one-hot), ``certified``
    (``(B, 1, *spatial)`` classes, -1 where the smoothed model abstains) and ``radius`` (``(B, 1, *spatial)``
    certified L2 radii), as :class:`~monai_advseg.engines.CertificationEvaluator`'s does.

    Args:
        cases: how many cases to keep.
    """

    state_key = "certification_gallery"

    def keep(self, engine: Engine, output: dict[str, Any], take: int) -> list[dict[str, Any]]:
        truth = class_indices(output["label"][:take])[:, 0]
        return [
            {
                "image": gallery_array(output["image"][b]),
                "label": truth[b].detach().cpu().long().numpy(),
                "certified": output["certified"][b, 0].detach().cpu().long().numpy(),
                "radius": gallery_array(output["radius"][b, 0]),
            }
            for b in range(take)
        ]
