"""monai_advseg: adversarial-attack-driven augmentation, NLCE networks and robustness evaluation for MONAI.

Subpackages: ``attacks`` (the pure-torch attack core), ``transforms``, ``networks``, ``engines``, ``handlers``,
``data``. Import what you need from them; this top level stays light so ``import monai_advseg`` is cheap.
"""

__version__ = "0.1.0"
