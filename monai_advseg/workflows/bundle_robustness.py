"""Robustness of any MONAI bundle, unmodified: its configs plus our overlay, read through standard property ids.

The bundle's ``train.json`` (and ``evaluate.json`` when present, JSON or YAML) are merged with the overlay
:data:`OVERLAY_CONFIG` (``configs/robustness.json`` in this package), which adds a ``robustness`` section and a ``run``
that evaluates it. The overlay only refers to MONAI's standard bundle property ids (:data:`PROPERTIES_FILE`):
``network_def`` (or ``network``), ``validate#dataset``, ``validate#preprocessing``, ``validate#inferer``,
``validate#postprocessing``, ``device``, ``bundle_root``, ``ckpt_dir``. So the same sweep also runs as::

    python -m monai.bundle run --config_file "['B/configs/train.json', '<overlay>']" --bundle_root B \\
        --robustness#output_dir OUT

:func:`bundle_robustness` is what ``python -m monai_advseg robustness`` calls: it checks the bundle and every argument
first (each problem an :class:`~monai_advseg.data.InputError` naming the file, key or value), then builds and runs
the sweep; nothing is written before the checks pass.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import default_prepare_batch
from torch import nn

from monai_advseg.data import InputError, MissingInputError
from monai_advseg.handlers.safe_load import load_network_weights
from monai_advseg.workflows.units import EpsilonUnits

__all__ = [
    "OVERLAY_CONFIG",
    "PROPERTIES_FILE",
    "PredictionRule",
    "bundle_config_files",
    "bundle_robustness",
    "certify_config",
    "first_cases",
    "load_bundle_network",
    "read_bundle",
    "report_config",
]

_CONFIGS = Path(__file__).resolve().parent / "configs"
#: The overlay merged after the bundle's configs (shipped as package data).
OVERLAY_CONFIG: Path = _CONFIGS / "robustness.json"
#: MONAI properties file of this workflow: ``ConfigWorkflow(..., workflow_type="infer", properties_path=...)``.
PROPERTIES_FILE: Path = _CONFIGS / "robustness_properties.json"

_CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def _cause(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in the ``__cause__`` / ``__context__`` chain (MONAI wraps errors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _root_message(error: BaseException) -> str:
    """The innermost exception's ``Type: message`` (MONAI's wrappers say only 'Failed to instantiate ...')."""
    inner = error
    while inner.__cause__ is not None:
        inner = inner.__cause__
    return f"{type(inner).__name__}: {' '.join(str(inner).split())}"


@dataclass(frozen=True)
class PredictionRule:
    """What counts as a prediction, read from the bundle's own postprocessing.

    Attributes:
        activation: ``"softmax"`` (argmax over channels), ``"sigmoid"`` (each channel thresholded on its own: one
            binary label, or several independent ones, multi-label) or ``"auto"`` (no activation found: argmax for
            several channels, ``sigmoid >= 0.5`` for one).
        threshold: the sigmoid threshold (``AsDiscreted(threshold=...)``, default 0.5).
        source: where the rule was read.
    """

    activation: str = "auto"
    threshold: float = 0.5
    source: str = "validate#postprocessing"

    @classmethod
    def from_postprocessing(cls, postprocessing: Any, key: str = "pred") -> PredictionRule:
        """Read ``Activationsd`` / ``AsDiscreted`` on ``key`` in a (composed) postprocessing; None: ``auto``.

        Args:
            postprocessing: the bundle's instantiated ``validate#postprocessing`` or None.
            key: the prediction key.

        Returns:
            the rule.
        """
        from monai.transforms import Activationsd, AsDiscreted

        from monai_advseg.workflows.units import _flatten

        if postprocessing is None:
            return cls(source="no validate#postprocessing")
        activation, threshold, argmax = "auto", 0.5, False
        for transform in _flatten(postprocessing):
            keys = tuple(getattr(transform, "keys", ()))
            if key not in keys:
                continue
            index = keys.index(key)
            if isinstance(transform, Activationsd):
                if transform.softmax[index]:
                    activation = "softmax"
                elif transform.sigmoid[index]:
                    activation = "sigmoid"
            elif isinstance(transform, AsDiscreted):
                argmax = argmax or bool(transform.argmax[index])
                if transform.threshold[index] is not None:
                    threshold = float(transform.threshold[index])
        if argmax:  # argmax of sigmoids is the argmax of the logits: score it as a softmax bundle
            activation = "softmax" if activation != "auto" else "auto"
        if not 0 < threshold < 1:
            raise InputError(f"validate#postprocessing: AsDiscreted threshold={threshold}: expected 0 < t < 1")
        return cls(activation, threshold)

    @property
    def needs_wrapper(self) -> bool:
        """Sigmoid bundles go through :class:`SigmoidPrediction` (their threshold)."""
        return self.activation == "sigmoid"

    @property
    def multi_label(self) -> bool:
        """The evaluator's ``multi_label``: a sigmoid bundle's channels are scored and attacked one by one (with one
        channel, the binary case)."""
        return self.activation == "sigmoid"

    def network(self, network: nn.Module, multi_label: bool = False) -> nn.Module:
        """The module the evaluator attacks through the bundle's inferer: the network, or (sigmoid) adapted.

        Args:
            network: the bundle's network.
            multi_label: the evaluator scores several sigmoid channels one by one (else :class:`SigmoidPrediction`
                refuses them).
        """
        if not self.needs_wrapper:
            return network
        return SigmoidPrediction(network, self.threshold, multi_label=multi_label)

    @property
    def prepare_batch(self) -> Callable:
        """The evaluator's ``prepare_batch`` (MONAI's default: ``image`` and ``label``)."""
        return default_prepare_batch

    def describe(self) -> dict[str, Any]:
        """The rule and the attack loss that follows from it, for the report."""
        loss = {
            "softmax": "cross-entropy over the channels (softmax), summed over voxels",
            "sigmoid": "binary cross-entropy of each channel (one label per channel), logits shifted to the threshold, "
            "summed over channels and voxels",
            "auto": "cross-entropy for several channels, binary cross-entropy for one, summed over voxels",
        }[self.activation]
        return {"activation": self.activation, "threshold": self.threshold, "source": self.source, "attack_loss": loss}


class SigmoidPrediction(nn.Module):
    """A sigmoid network's logits shifted by the bundle's threshold: ``z - logit(threshold)``, every channel.

    The evaluator scores each channel as ``sigmoid >= 0.5`` (one channel, or several with ``multi_label``) and the
    attack loss is each channel's binary cross-entropy, so after the shift both follow the bundle's decision
    ``sigmoid(z) >= threshold``. The bundle's inferer runs around this module, as around the network: a sliding
    window averages the windows' logits (the blending weights of a voxel sum to one), so the shift per window is the
    shift of the stitched logits, and the evaluator streams a ``SlidingWindowInferer``'s input gradient as for any
    bundle.

    Args:
        network: the bundle's network.
        threshold: the sigmoid threshold of the bundle's postprocessing.
        multi_label: several channels are independent labels that the evaluator scores one by one
            (``RobustnessEvaluator(multi_label=True)``); False refuses them.

    Raises:
        InputError: (in ``forward``) for a multi-channel output without ``multi_label``: a softmax reading of the
            labels (argmax, cross-entropy over the channels) would score and attack something else.
    """

    def __init__(self, network: nn.Module, threshold: float = 0.5, multi_label: bool = False) -> None:
        super().__init__()
        self.multi_label = bool(multi_label)
        self.network = network
        self.threshold = float(threshold)
        self.shift = math.log(threshold / (1 - threshold))

    def forward(self, image: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        from monai_advseg.attacks.gradient import network_logits

        logits = network_logits(self.network(image, *args, **kwargs))
        if logits.shape[1] != 1 and not self.multi_label:
            raise InputError(
                f"validate#postprocessing: sigmoid activation on a {logits.shape[1]}-channel output (multi-label): "
                "not supported here (argmax and a softmax cross-entropy would read the labels as classes); "
                "the robustness sweep supports it, one-channel sigmoid and softmax bundles run everywhere"
            )
        return logits - self.shift if self.shift else logits


def first_cases(dataset: Any, max_cases: int | None) -> Any:
    """The first ``max_cases`` items of a dataset (all for None)."""
    if max_cases is None or len(dataset) <= max_cases:
        return dataset
    return torch.utils.data.Subset(dataset, range(max_cases))


def load_bundle_network(network: nn.Module, checkpoint: str | Path | None, device: Any) -> nn.Module:
    """Load the bundle's weights into its network (``weights_only``, strict) and move it to ``device``.

    Args:
        network: the bundle's ``network_def`` (or ``network``).
        checkpoint: the weights file; None keeps the network's initial weights.
        device: the target device.

    Returns:
        the network.

    Raises:
        InputError: naming the checkpoint file when it is missing, holds pickled objects or does not fit.
    """
    if not isinstance(network, nn.Module):
        raise InputError(f"network_def: builds a {type(network).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        try:
            load_network_weights(network, checkpoint)
        except FileNotFoundError:
            raise MissingInputError(
                f"{checkpoint}: checkpoint not found; train the bundle first, or pass --ckpt PATH"
            ) from None
        except ValueError as error:
            text = str(error)
            prefix = f"checkpoint {checkpoint} "
            raise InputError(f"{checkpoint}: {text[len(prefix) :] if text.startswith(prefix) else text}") from None
    return network.to(device)


def report_config(
    units: EpsilonUnits, levels: Sequence[float], alpha_levels: float, prediction: PredictionRule, info: dict
) -> dict[str, Any]:
    """The ``config`` block the evaluator stores in ``robustness.json``: the bundle, the units and the prediction.

    Args:
        units: the conversion of the sweep.
        levels: the strengths in levels.
        alpha_levels: the step size in levels.
        prediction: the prediction rule.
        info: what the command adds (bundle name, config files, checkpoint, ...).

    Returns:
        ``{**info, "epsilon_units": {...}, "prediction": {...}}``; ``epsilon_units`` holds every strength (in the
        sweep's ascending order) and the step size in levels, input units and HU, and how they were converted.
    """
    ordered = sorted(float(v) for v in levels)
    alpha = units.all_units([alpha_levels])
    prediction_block = prediction.describe()
    if "attack_loss" in info:  # --attack_loss bundle replaces the rule's loss
        prediction_block["attack_loss"] = info["attack_loss"]
    return {
        **info,
        "epsilon_units": {
            **units.describe(),
            **units.all_units(ordered),
            "alpha": {name: None if values is None else values[0] for name, values in alpha.items()},
        },
        "prediction": prediction_block,
    }


def certify_config(
    units: EpsilonUnits,
    sigma: float,
    radii: Sequence[float] | None,
    attack_radii: Sequence[float] | None,
    prediction: PredictionRule,
    info: dict,
) -> dict[str, Any]:
    """The ``config`` block the certification stores in ``certify.json``: the bundle, the units and the prediction.

    Args:
        units: the conversion of the command's values (``--epsilon_unit``).
        sigma: the noise std in input units.
        radii: the certificate's radii in input units; None: :func:`~monai_advseg.engines.default_radii`.
        attack_radii: the attacked radii in input units, or None.
        prediction: the prediction rule.
        info: what the command adds (bundle name, config files, checkpoint, ...).

    Returns:
        ``{**info, "certify_units": {...}, "prediction": {...}}``; ``certify_units`` holds sigma and every radius in
        levels, input units and HU, and how they were converted.
    """
    from monai_advseg.engines.certification import default_radii

    def in_all_units(values: Sequence[float]) -> dict[str, list[float] | None]:
        return units.all_units([v / units.input_per_level for v in values])

    description = units.describe()
    description["note"] = (
        "sigma (the noise std) and the radii are L2 norms; the intensity map is linear, so they convert with the "
        "same factor as an L-inf epsilon (||scale * d|| = |scale| * ||d||): a level is 1/255 of input_range, HU go "
        "through the fixed linear intensity map (null when the map differs per image); the noise is not clipped"
    )
    sigma_units = in_all_units([sigma])
    return {
        **info,
        "certify_units": {
            **description,
            "sigma": {name: None if values is None else values[0] for name, values in sigma_units.items()},
            "radii": in_all_units(sorted(default_radii(sigma) if radii is None else radii)),
            "attack_radii": None if attack_radii is None else in_all_units(sorted(attack_radii)),
        },
        "prediction": prediction.describe(),
    }


def _check_certify_arguments(
    sigma: float | None,
    n0: int,
    n: int,
    certify_alpha: float,
    radii: Sequence[float] | None,
    attack_radii: Sequence[float] | None,
) -> None:
    """Each bad certification argument as an InputError naming its flag (before the bundle is read)."""
    if sigma is None:
        raise InputError("--sigma: required with --certify (the noise std, in --epsilon_unit)")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise InputError(f"--sigma: {sigma!r}: expected a finite number > 0 (the noise std, in --epsilon_unit)")
    for flag, value in (("--n0", n0), ("--n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{flag}: {value!r}: expected an integer >= 1 (noisy samples per image)")
    if isinstance(certify_alpha, bool) or not isinstance(certify_alpha, (int, float)) or not 0 < certify_alpha < 1:
        raise InputError(f"--certify_alpha: {certify_alpha!r}: expected a number in (0, 1) (family-wise error level)")
    for flag, values in (("--radii", radii), ("--attack_radii", attack_radii)):
        if values is None:
            continue
        values = list(values)
        if not values or any(not math.isfinite(v) or v < 0 for v in values) or len(set(values)) != len(values):
            raise InputError(f"{flag}: {values}: expected radii that are finite and >= 0, at least one, none twice")
    if attack_radii is not None and min(attack_radii) <= 0:
        raise InputError(f"--attack_radii: {list(attack_radii)}: expected radii > 0 (radius 0 is the clean image)")


def bundle_config_files(bundle_root: str | Path, config_file: str | Sequence[str] | None = None) -> list[Path]:
    """The bundle's config files: ``config_file`` (relative to the bundle root or its ``configs/``), else
    ``configs/train.*`` then ``configs/evaluate.*`` (``.json``, ``.yaml`` or ``.yml``) when present.

    Raises:
        InputError: naming the bundle folder without ``configs/``, a missing file, or no train config.
    """
    root = Path(bundle_root)
    if not root.is_dir():
        raise MissingInputError(f"{root}: bundle folder not found")
    configs = root / "configs"
    if not configs.is_dir():
        raise MissingInputError(f"{root}: not a MONAI bundle: it has no configs/ folder")
    if config_file is not None:
        names = [config_file] if isinstance(config_file, (str, Path)) else list(config_file)
        files = []
        for name in names:
            path = Path(name)
            candidates = [path] if path.is_absolute() else [Path.cwd() / path, root / path, configs / path]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise MissingInputError(f"{name}: config file not found (looked in ., {root} and {configs})")
            files.append(found)
        return files

    def first(stem: str) -> Path | None:
        return next((configs / f"{stem}{s}" for s in _CONFIG_SUFFIXES if (configs / f"{stem}{s}").is_file()), None)

    train = first("train")
    if train is None:
        raise MissingInputError(f"{configs}: no train.json / train.yaml; name the configs with --config_file")
    evaluate = first("evaluate")
    return [train] + ([evaluate] if evaluate is not None else [])


def _load_config_file(path: Path) -> dict:
    """One config file as a dict, its parse error named with file and line."""
    from monai.bundle import ConfigParser

    try:
        content = ConfigParser.load_config_file(path)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: line {error.lineno} column {error.colno}: not valid JSON: {error.msg}") from None
    except Exception as error:  # yaml.YAMLError (yaml is imported lazily by MONAI) or a bad suffix
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        raise InputError(f"{path}: {where}does not parse: {problem}") from None
    if not isinstance(content, dict):
        raise InputError(f"{path}: a bundle config must be a mapping of ids, found a {type(content).__name__}")
    return content


def required_properties() -> dict[str, dict]:
    """The workflow's properties (``infer`` section of :data:`PROPERTIES_FILE`)."""
    with open(PROPERTIES_FILE, encoding="utf-8") as stream:
        return json.load(stream)["infer"]


def read_bundle(bundle_root: str | Path, config_files: Sequence[Path], overrides: dict[str, Any] | None = None) -> Any:
    """A ``ConfigParser`` holding the bundle's configs, then the overlay, then ``overrides``.

    The bundle folder goes on ``sys.path`` first, as ``monai.bundle run`` does, so that its ``scripts/`` import.

    Raises:
        InputError: naming a config that does not parse (file and line), every missing required property id, or a
            bundle with neither ``network_def`` nor ``network``.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.utils import merge_kv

    root = Path(bundle_root).resolve()
    if str(root) not in sys.path:
        sys.path.insert(1, str(root))
    for path in config_files:  # each file parses on its own first, so that an error names the file and line
        _load_config_file(Path(path))
    parser = ConfigParser(globals={"monai_advseg": "monai_advseg"})  # what the overlay's expressions call
    parser.read_config(f=[str(p) for p in config_files])  # merged as `monai.bundle run` merges them
    metadata = root / "configs" / "metadata.json"
    if metadata.is_file():  # its name, version and monai_version go into the report and the messages
        parser.read_meta(_load_config_file(metadata))
    names = ", ".join(str(p) for p in config_files)
    missing = [
        f"{names}: missing property id '{p['id']}' ({name}: {p['description']})"
        for name, p in required_properties().items()
        if p.get("required") and p["id"] not in parser
    ]
    if "network_def" not in parser and "network" not in parser:
        missing.append(f"{names}: missing property id 'network_def' (or 'network'): the network to evaluate")
    if missing:
        raise InputError(missing)
    # the overlay's "run" replaces the bundle's; the bundle's "initialize" (e.g. set_determinism) is kept
    for key, value in [*_load_config_file(OVERLAY_CONFIG).items(), *(overrides or {}).items()]:
        merge_kv(parser, key, value)
    return parser


def _resolve(parser: Any, config_id: str, what: str) -> Any:
    """``parser.get_parsed_content(config_id)``; any failure is an InputError naming ``what`` and the root cause."""
    try:
        return parser.get_parsed_content(config_id)
    except Exception as error:
        found = _cause(error, InputError)
        if found is not None:
            raise found from None
        raise InputError(f"{what}: {_root_message(error)}") from None


def _network_error(parser: Any, config_id: str, error: BaseException) -> InputError:
    target = parser.get(f"{config_id}#_target_", None) if isinstance(parser[config_id], dict) else parser[config_id]
    import monai

    written_for = parser.get("_meta_#monai_version", None)
    hint = (
        f"; the bundle was written for MONAI {written_for}, this is MONAI {monai.__version__}: its arguments may "
        "have changed since"
        if written_for and str(written_for) != monai.__version__
        else ""
    )
    return InputError(f"{config_id}: cannot build {target}: {_root_message(error)}{hint}")


#: ``--attack_loss`` values: the prediction rule's loss, or the bundle's own ``loss``.
ATTACK_LOSSES = ("default", "bundle")


def _bundle_loss(parser: Any) -> str:
    """Check the bundle's ``loss`` for ``--attack_loss bundle``; return its description for the report."""
    if "loss" not in parser:
        raise InputError("--attack_loss bundle: the bundle's configs define no `loss` id")
    loss = _resolve(parser, "loss", "loss")
    kind = type(loss)
    if not (isinstance(loss, nn.Module) and kind.__module__.startswith("monai.losses")):
        raise InputError(
            f"loss: {kind.__module__}.{kind.__qualname__} is not a MONAI loss (monai.losses); "
            "--attack_loss bundle takes a MONAI loss of (logits, label), e.g. DiceCELoss"
        )
    return (
        f"the bundle's loss: {kind.__module__}.{kind.__qualname__}, per sample (monai_advseg.attacks.per_sample_loss)"
    )


def _check_items(parser: Any, dataset_dir: Path, image_key: str, label_key: str = "label") -> int:
    """Check ``validate#dataset#data``: a non-empty list of items with an image and a label that exist."""
    items = _resolve(parser, "validate#dataset#data", "validate#dataset#data")
    if not isinstance(items, (list, tuple)) or not items:
        raise InputError(f"validate#dataset#data: no evaluation items (dataset_dir {dataset_dir}); check --dataset_dir")
    problems = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"validate#dataset#data[{index}]: {item!r}: expected a dict with '{image_key}', 'label'")
            continue
        for key in (image_key, label_key):
            value = item.get(key)
            if value is None:
                name = item.get(image_key, f"item {index}")
                problems.append(f"{name}: validate#dataset#data[{index}] has no '{key}'; a sweep needs labels")
            elif isinstance(value, (str, Path)) and not Path(value).exists():
                problems.append(f"{value}: file not found (validate#dataset#data[{index}]['{key}'])")
    if problems:
        raise InputError(problems[:20], truncated=len(problems) > 20)
    return len(items)


def bundle_robustness(
    bundle_root: str | Path,
    output_dir: str | Path,
    dataset_dir: str | Path | None = None,
    epsilons: Sequence[float] | None = None,
    epsilon_unit: str = "levels",
    alpha: float | None = None,
    attack: str = "ifgsm_targeted",
    steps: int | None = None,
    config_file: str | Sequence[str] | None = None,
    ckpt: str | Path | None = None,
    device: str | None = None,
    max_cases: int | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    intensity_range: Sequence[float] | None = None,
    max_batch: int | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    certify: bool = False,
    sigma: float | None = None,
    n0: int = 10,
    n: int = 100,
    certify_alpha: float = 0.001,
    radii: Sequence[float] | None = None,
    attack_radii: Sequence[float] | None = None,
    attack_loss: str = "default",
) -> dict[str, Any]:
    """Evaluate an unmodified MONAI bundle under an epsilon sweep and write the robustness reports.

    With ``certify`` the bundle's smoothed model is certified instead
    (:class:`~monai_advseg.engines.CertificationEvaluator`) and the certification reports are written (``certify.json``,
    ``certify.csv``, ``certify_cases.csv``, ``certify.png``, ``certify_gallery.png``); ``sigma``, ``radii`` and
    ``attack_radii`` are in ``epsilon_unit`` and convert to input units with the same linear factor as an epsilon.

    Args:
        bundle_root: the bundle folder (with ``configs/``).
        output_dir: the report folder (``robustness.csv``, ``robustness_cases.csv``, ``robustness.json``, ``.png``).
        dataset_dir: overrides the bundle's ``dataset_dir``.
        epsilons: the strengths in ``epsilon_unit``; None: the NLCE paper's sweep, its 18 strengths in levels
            whatever ``epsilon_unit`` (the report gives them in every unit it knows).
        epsilon_unit: ``levels`` (of 255 of the network-input range), ``hu`` (source units, through a fixed linear
            intensity map) or ``input`` (network-input units).
        alpha: step size of iterative attacks in ``epsilon_unit``; None: one level.
        attack: a name of :data:`~monai_advseg.attacks.ATTACK_SPECS`.
        steps: fixed iterations; None: the Kurakin schedule.
        config_file: the bundle's config files; None: ``configs/train.*`` + ``configs/evaluate.*``.
        ckpt: the weights; None: ``<ckpt_dir>/model.pt`` (``<bundle_root>/models/model.pt`` without ``ckpt_dir``).
        device: overrides the bundle's ``device``, e.g. ``"cpu"``.
        max_cases: evaluate the first N items of ``validate#dataset``.
        progress: show a progress bar (None: on a terminal).
        overwrite: replace an existing report in ``output_dir``.
        intensity_range: the network-input range ``(lo, hi)`` where the preprocessing does not bound it.
        max_batch: at most this many samples per forward.
        seed: seed of random attacks.
        overrides: further config overrides, ``{"id#path": value}``, applied last.
        certify: certify the smoothed model instead of running the sweep.
        sigma: the smoothing's noise std in ``epsilon_unit`` (required with ``certify``).
        n0: noisy samples that choose each voxel's class.
        n: noisy samples that bound its probability.
        certify_alpha: the certificate's family-wise error level over a case's voxels.
        radii: the certificate's L2 radii in ``epsilon_unit``; None: 0 .. 2 sigma.
        attack_radii: L2 radii (``epsilon_unit``) at which the base model is attacked with L2 PGD (``steps``
            iterations, default 20) for the report's check; None: no attack.
        attack_loss: ``default`` (the loss that follows from the prediction rule: cross-entropy, or binary
            cross-entropy per channel) or ``bundle``: the bundle's own ``loss`` (a MONAI loss taking
            ``(logits, label)``, e.g. ``DiceCELoss``), applied to each sample on its own
            (:func:`~monai_advseg.attacks.per_sample_loss`); for the single-loss attacks (``ifgsm_targeted``,
            ``fgsm``, ``pgd``, ``pgd_l2``). Recorded in the report's ``config.attack_loss``. Sweep only.

    Returns:
        the report (``RobustnessEvaluator.results``, or ``CertificationEvaluator.results`` with ``certify``).

    Raises:
        InputError: on any bad input (bundle, configs, property ids, network, checkpoint, data, units, attack,
            existing report), before anything is written.
    """
    from monai_advseg.attacks.specs import build_attack_spec
    from monai_advseg.handlers.certification_report import check_certify_dir
    from monai_advseg.handlers.robustness_report import check_report_dir
    from monai_advseg.workflows.units import EPSILON_UNITS

    try:
        if certify:
            check_certify_dir(output_dir, overwrite)
        else:
            check_report_dir(output_dir, overwrite)
    except (FileExistsError, NotADirectoryError) as error:
        raise InputError(f"{output_dir}: {error}; pass --overwrite true to replace it") from None
    if epsilon_unit not in EPSILON_UNITS:
        raise InputError(f"--epsilon_unit: {epsilon_unit!r}: unknown unit; choose one of {', '.join(EPSILON_UNITS)}")
    if certify:
        _check_certify_arguments(sigma, n0, n, certify_alpha, radii, attack_radii)
        if epsilons is not None:
            raise InputError("--epsilons: not used with --certify (give the certificate's --radii)")
    else:
        given = {"--sigma": sigma, "--radii": radii, "--attack_radii": attack_radii}
        stray = [flag for flag, value in given.items() if value is not None]
        if stray:
            raise InputError(f"{', '.join(stray)}: only with --certify")
    try:
        spec = build_attack_spec(attack)
    except ValueError as error:
        raise InputError(f"--attack: {error}") from None
    if attack_loss not in ATTACK_LOSSES:
        raise InputError(f"--attack_loss: {attack_loss!r}: unknown; choose one of {', '.join(ATTACK_LOSSES)}")
    if certify and attack_loss != "default":
        raise InputError("--attack_loss: only for the sweep, not with --certify")
    if attack_loss == "bundle" and not spec.accepts_loss:
        raise InputError(
            f"--attack_loss bundle: attack {attack!r} has its own loss(es); the bundle's loss drives "
            "ifgsm_targeted, fgsm, pgd or pgd_l2"
        )
    # None: the overlay's default, the paper's strengths in levels whatever --epsilon_unit (which still applies to
    # --alpha)
    if epsilons is not None and (len(set(epsilons)) != len(list(epsilons)) or not list(epsilons)):
        raise InputError(f"--epsilons: {list(epsilons)}: give at least one strength, none twice")
    if max_cases is not None and max_cases < 1:
        raise InputError(f"--max_cases: {max_cases}: expected an integer >= 1")
    root = Path(bundle_root).resolve()
    files = bundle_config_files(root, config_file)
    settings: dict[str, Any] = {"bundle_root": str(root)}
    if dataset_dir is not None:
        if not Path(dataset_dir).is_dir():
            raise MissingInputError(f"{dataset_dir}: dataset folder not found (--dataset_dir)")
        settings["dataset_dir"] = str(Path(dataset_dir).resolve())
    if device is not None:
        settings["device"] = f"$torch.device({str(device)!r})"
    parser = read_bundle(root, files, {**settings, **(overrides or {})})
    if "network_def" not in parser:
        parser["robustness#network_def"] = "@network"
    for name in ("preprocessing", "postprocessing"):
        if f"validate#{name}" not in parser:
            parser[f"robustness#{name}"] = None
    image_key = parser["robustness#image_key"]
    data_dir = Path(str(_resolve(parser, "dataset_dir", "dataset_dir")))
    n_items = None
    if "validate#dataset#data" in parser:
        n_items = _check_items(parser, data_dir, image_key)
        if max_cases is not None:  # cut the item list before the bundle's (caching) dataset loads every item
            parser["robustness#all_data"] = parser["validate#dataset#data"]
            parser["validate#dataset#data"] = f"$@robustness#all_data[:{int(max_cases)}]"
    if ckpt is None:
        folder = _resolve(parser, "ckpt_dir", "ckpt_dir") if "ckpt_dir" in parser else root / "models"
        ckpt = Path(str(folder)) / "model.pt"
    loss_description = None
    if attack_loss == "bundle":
        loss_description = _bundle_loss(parser)
        parser["robustness#attack_loss_fn"] = "$monai_advseg.attacks.per_sample_loss(@loss)"
    metadata = parser.get("_meta_", {}) or {}
    parser.update(
        {
            "robustness#epsilons": None if epsilons is None else [float(e) for e in epsilons],
            "robustness#epsilon_unit": epsilon_unit,
            "robustness#alpha": alpha,
            "robustness#attack": attack,
            "robustness#steps": steps,
            "robustness#ckpt": str(ckpt),
            "robustness#output_dir": str(output_dir),
            "robustness#overwrite": bool(overwrite),
            "robustness#progress": progress,
            "robustness#seed": int(seed),
            "robustness#max_batch": max_batch,
            "robustness#max_cases": max_cases,
            "robustness#intensity_range": None if intensity_range is None else [float(v) for v in intensity_range],
            "robustness#info": {
                "bundle": metadata.get("name") or root.name,
                "bundle_version": metadata.get("version"),
                "bundle_root": str(root),
                "config_files": [str(f) for f in files] + [str(OVERLAY_CONFIG)],
                "checkpoint": str(ckpt),
                "dataset_dir": str(data_dir),
                "n_items": n_items,
                "max_cases": max_cases,
                **(
                    {"sigma_given": sigma, "radii_given": radii, "attack_radii_given": attack_radii}
                    if certify
                    else {
                        "epsilons_given": None if epsilons is None else sorted(float(e) for e in epsilons),
                        "alpha_given": alpha,
                    }
                ),
                **({} if loss_description is None else {"attack_loss": loss_description}),
            },
        }
    )
    if certify:
        parser.update(
            {
                "certify#sigma": float(sigma),
                "certify#n0": int(n0),
                "certify#n": int(n),
                "certify#alpha": float(certify_alpha),
                "certify#radii": None if radii is None else [float(r) for r in radii],
                "certify#attack_radii": None if attack_radii is None else [float(r) for r in attack_radii],
                "certify#attack_steps": 20 if steps is None else int(steps),
            }
        )
    try:
        network = parser.get_parsed_content("robustness#network_def")
    except Exception as error:
        raise _network_error(parser, "network_def" if "network_def" in parser else "network", error) from None
    del network  # now cached in the parser: the evaluator gets this very module
    _resolve(parser, "robustness#network", "checkpoint")
    _resolve(parser, "robustness#units", "validate#preprocessing")
    _resolve(parser, "robustness#prediction", "validate#postprocessing")
    if certify:
        for key, flag in (("sigma", "--sigma"), ("radii", "--radii"), ("attack_radii", "--attack_radii")):
            _resolve(parser, f"certify#{key}_input", flag)
    else:
        _resolve(parser, "robustness#levels", "--epsilons")
        _resolve(parser, "robustness#alpha_levels", "--alpha")
    _resolve(parser, "validate#inferer", "validate#inferer")
    _resolve(parser, "robustness#dataset", "validate#dataset")
    name = "certify#evaluator" if certify else "robustness#evaluator"
    evaluator = _resolve(parser, name, name)
    evaluator.run()
    return evaluator.results
