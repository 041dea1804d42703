"""monai_advseg: adversarial-attack-driven augmentation, NLCE networks and robustness evaluation for MONAI.

Subpackages: ``attacks`` (the pure-torch attack core), ``certify`` (randomized smoothing), ``transforms``,
``networks``, ``engines``, ``handlers``, ``inferers``, ``data``, ``workflows``. Import what you need from them; this
top level stays light so ``import monai_advseg`` is cheap.
"""

__version__ = "0.1.0"

import importlib
from typing import Any

_SUBPACKAGES = ("attacks", "certify", "data", "engines", "handlers", "inferers", "networks", "transforms", "workflows")


def __getattr__(name: str) -> Any:
    # Bundle expressions such as "$monai_advseg.data.split_datalist(...)" only ``import monai_advseg``.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
