"""Online data augmentation in a MONAI trainer: FGSM / inverse-FGSM copies of every training batch, and a Gaussian
noise copy (noise training for randomized smoothing)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.utils.enums import CommonKeys as Keys

from monai_advseg.attacks import fgsm_pair, signed_step
from monai_advseg.attacks.validation import check_clip_range
from monai_advseg.engines.flags import as_flag
from monai_advseg.networks.auxiliary_bn import auxiliary_bn, auxiliary_bn_layers

__all__ = [
    "AUGMENTATIONS",
    "AdversarialAugmentationTrainer",
    "adversarial_augmentations",
    "check_noise_sigma",
    "online_augmentations",
    "parse_augmentations",
]

#: Augmentation name -> direction of the signed step (+1 ascends the loss, -1 descends it), or None for
#: ``"gaussian"``: the copy ``x + N(0, sigma^2)``, which needs no gradient.
AUGMENTATIONS: dict[str, int | None] = {"fgsm": 1, "inverse_fgsm": -1, "gaussian": None}


def adversarial_augmentations(names: str | Sequence[str]) -> tuple[str, ...]:
    """The names among ``names`` whose copies are adversarial (made from an input gradient): not ``"gaussian"``."""
    return tuple(name for name in parse_augmentations(names) if AUGMENTATIONS[name] is not None)


def check_noise_sigma(noise_sigma: float) -> float:
    """``noise_sigma`` as a float, the std of the Gaussian copy in network-input units.

    Raises:
        ValueError: when it is not a finite number > 0.
    """
    try:
        sigma = float(noise_sigma)
    except (TypeError, ValueError):
        raise ValueError(f"noise_sigma must be a number > 0 (network-input units), got {noise_sigma!r}") from None
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"noise_sigma must be a finite number > 0 (network-input units), got {noise_sigma!r}")
    return sigma


def online_augmentations(augmentation: str | Sequence[str], online: bool | str) -> tuple[str, ...]:
    """The augmentations the trainer makes itself: all of them when ``online``, none when the copies come from disk."""
    names = parse_augmentations(augmentation)
    return names if as_flag(online, "online") else ()


def parse_augmentations(augmentations: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise an augmentation choice: a name, a list of names, ``"both"`` or ``"none"``.

    Raises:
        ValueError: on an unknown name or a repeated one.
    """
    if isinstance(augmentations, str):
        names = {"none": (), "both": ("fgsm", "inverse_fgsm")}.get(augmentations, (augmentations,))
    else:
        names = tuple(augmentations)
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {sorted(AUGMENTATIONS)}, 'both' or 'none'")
    if len(set(names)) != len(names):
        raise ValueError(f"augmentations must not repeat a name, got {list(names)}")
    return names


class AdversarialAugmentationTrainer(SupervisedTrainer):
    """A :class:`monai.engines.SupervisedTrainer` that also trains on FGSM, inverse-FGSM and/or Gaussian copies.

    Per iteration: the clean batch's forward/backward, then each copy's own forward/backward, then one optimizer step.
    The objective is the weighted mean ``(L_clean + sum_k w_k L_k) / (1 + sum_k w_k)``, which with unit weights equals
    training on the union of the clean and the adversarial images (the paper's offline procedure, done online).

    With ``reuse_gradient=True`` (default) the input gradient that makes the copies comes from the clean batch's own
    backward pass (the one that also gives the weight gradients), so both copies cost no extra pass: the gradient is
    that of the training loss with the network in training mode. With ``reuse_gradient=False`` the copies come from a
    separate attack (:func:`monai_advseg.attacks.fgsm_pair`) with the network in eval mode and ``attack_loss_fn``.
    Either way batch-norm running statistics are updated by the clean and the copy passes only, never by an attack.

    ``"gaussian"`` adds the copy ``x + N(0, noise_sigma^2)`` per voxel, noise training for randomized smoothing
    (:mod:`monai_advseg.certify`): ``noise_sigma`` is in network-input units, as the certificate's ``sigma``, and
    the copy is **not** clipped to ``clip_range``, as the certificate's noisy samples are not, so the network learns
    the distribution it is certified on. It is weighted like the other copies, drawn fresh each iteration from
    torch's global generator (so ``monai.utils.set_determinism`` makes a run repeatable) and needs no gradient: no
    attack pass, whatever ``reuse_gradient`` says.

    ``auxiliary_bn=True`` (AdvProp, Xie et al. 2020) sends the copies through the twins that
    :func:`monai_advseg.networks.convert_to_auxiliary_bn` gives every batch-norm layer; the clean pass, the attack
    of ``reuse_gradient=False``, evaluation and inference use the main batch norm only. The FGSM and inverse-FGSM
    copies share one twin per layer: both are the clean image plus a +-eps sign pattern (the same perturbation
    energy, so similar feature statistics), AdvProp keeps one auxiliary batch norm for all perturbed images, and a
    shared twin sees twice the batches, so its running statistics are steadier. The copies' input gradient always
    comes from the **main** batch norm: with ``reuse_gradient=True`` it is the clean pass's own gradient (free, and
    adversarial for the network that is evaluated and deployed), with ``reuse_gradient=False`` the eval-mode attack
    sees the main running statistics, as every evaluation attack does. (AdvProp crafts its examples through the
    auxiliary batch norm instead; that costs one more forward/backward per iteration and attacks a network nobody
    deploys.) The Gaussian copy goes through the **main** batch norm: it is not adversarial, and the certified
    (smoothed) network evaluates noisy inputs through the main batch norm, so the statistics it is certified with
    must have seen them. ``auxiliary_bn=True`` therefore needs at least one adversarial copy.

    AMP: ``amp=True`` autocasts on the engine's device type (float16 + ``GradScaler`` on CUDA, bfloat16 without a
    scaler on CPU). ``engine.state.output`` holds ``image``, ``label``, ``pred`` (clean), ``loss`` and ``loss_clean``,
    ``loss_fgsm``, ``loss_inverse_fgsm``, ``loss_gaussian`` (each the unweighted mean loss of that pass). ``loss`` is
    always the whole objective ``(L_clean + sum_k w_k L_k) / (1 + sum_k w_k)`` (detached), never the clean loss nor a
    partial sum: it is set once every pass's loss is known. Events: FORWARD_COMPLETED after the clean forward pass;
    LOSS_COMPLETED once all the loss terms above are computed (unlike :class:`~monai.engines.SupervisedTrainer`, the
    passes' ``backward`` calls have already run then, since the reused-gradient copies need the clean backward);
    BACKWARD_COMPLETED right after it; MODEL_COMPLETED at the end (after the optimizer step, on iterations that step).

    ``accumulation_steps`` and ``compile`` work as in :class:`~monai.engines.SupervisedTrainer`: the gradients of
    ``accumulation_steps`` iterations are summed, each scaled by ``1 / accumulation_steps``, before one optimizer step
    (and a last step at the end of an epoch whose length is not a multiple); with ``compile=True`` the compiled network
    sees plain tensors, and ``image``, ``label`` and ``pred`` get the batch's MetaTensor information back.

    Args:
        augmentations: ``"fgsm"``, ``"inverse_fgsm"``, ``"gaussian"``, ``"both"`` (the two FGSM copies), ``"none"``
            or a list of names.
        epsilon: strength in input units (0.1 on [0, 1] inputs in the paper).
        noise_sigma: std of the ``"gaussian"`` copy's noise in input units (> 0; checked even when unused).
        clip_range: valid intensity range ``(lo, hi)`` or None.
        loss_weights: weight per augmentation name (default 1.0 each).
        reuse_gradient: take the input gradient from the clean backward pass (see above).
        attack_loss_fn: loss of the separate attack when ``reuse_gradient=False`` (default summed cross-entropy).
        auxiliary_bn: pass the copies through the auxiliary batch norm (see above); the network must have been
            converted with :func:`~monai_advseg.networks.convert_to_auxiliary_bn` before the optimizer was built.
        All other arguments are :class:`monai.engines.SupervisedTrainer`'s.

    Raises:
        ValueError: on unknown augmentation names, negative epsilon, ``noise_sigma`` <= 0, bad ``clip_range`` or
            weights; with ``auxiliary_bn`` without online adversarial augmentations, on a network without twins or
            with an optimizer that does not train them.
    """

    def __init__(
        self,
        *args: Any,
        augmentations: str | Sequence[str] = "both",
        epsilon: float = 0.1,
        noise_sigma: float = 0.25,
        clip_range: Sequence[float] | None = None,
        loss_weights: Mapping[str, float] | None = None,
        reuse_gradient: bool = True,
        attack_loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        auxiliary_bn: bool | str = False,
        **kwargs: Any,
    ) -> None:
        self.augmentations = parse_augmentations(augmentations)
        if not float(epsilon) >= 0:
            raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.noise_sigma = check_noise_sigma(noise_sigma)
        self.adversarial = adversarial_augmentations(self.augmentations)
        self.clip_range = check_clip_range(clip_range)
        weights = dict(loss_weights or {})
        unknown = set(weights) - set(self.augmentations)
        if unknown:
            raise ValueError(f"loss_weights names {sorted(unknown)} not in augmentations {list(self.augmentations)}")
        self.loss_weights = {name: float(weights.get(name, 1.0)) for name in self.augmentations}
        if any(w < 0 for w in self.loss_weights.values()):
            raise ValueError(f"loss_weights must be >= 0, got {self.loss_weights}")
        self.reuse_gradient = as_flag(reuse_gradient, "reuse_gradient")
        self.attack_loss_fn = attack_loss_fn
        self.auxiliary_bn = as_flag(auxiliary_bn, "auxiliary_bn")
        super().__init__(*args, **kwargs)
        if self.auxiliary_bn:
            self._check_auxiliary_bn()
        device = torch.device(self.state.device) if self.state.device is not None else torch.device("cpu")
        self.amp_device_type = device.type

    def run(self) -> None:  # type: ignore[override]
        """Train. Unlike MONAI's CUDA-only scaler set-up, AMP here follows the device: a float16 ``GradScaler`` on
        CUDA, and no scaler for bfloat16 autocast on CPU."""
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and self.amp_device_type == "cuda" else None
        Workflow.run(self)

    def _check_auxiliary_bn(self) -> None:
        if not self.adversarial:
            raise ValueError(
                "auxiliary_bn=True needs online copies that are adversarial (augmentations fgsm, inverse_fgsm or "
                f"both with online=true), got {list(self.augmentations) or 'none'}: offline copies come mixed with the "
                "originals and the gaussian copy goes through the main batch norm, so no batch could go to the twins"
            )
        layers = auxiliary_bn_layers(self.network)
        if not layers:
            raise ValueError(
                f"auxiliary_bn=True needs a network converted with monai_advseg.networks.convert_to_auxiliary_bn "
                f"(before building the optimizer); {type(self.network).__name__} has no auxiliary batch norm"
            )
        trained = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        untrained = [
            name
            for name, layer in layers.items()
            for p in layer.auxiliary_bn.parameters()
            if p.requires_grad and id(p) not in trained
        ]
        if untrained:
            raise ValueError(
                f"auxiliary_bn=True but the optimizer does not train the twins of {untrained[:3]}"
                f"{'...' if len(untrained) > 3 else ''}: convert the network before building the optimizer"
            )

    def _autocast(self):
        if not self.amp:
            return nullcontext()
        kwargs = dict(self.amp_kwargs)
        kwargs.setdefault("dtype", torch.float16 if self.amp_device_type == "cuda" else torch.bfloat16)
        return torch.autocast(self.amp_device_type, **kwargs)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _copies(self, inputs: torch.Tensor, targets: torch.Tensor, gradient: torch.Tensor | None):
        """Every copy of the batch by name, in the order of ``augmentations``."""
        copies: dict[str, torch.Tensor] = {}
        if gradient is not None:
            # Non-finite entries only appear when an fp16 pass overflowed; the scaler then skips the step anyway.
            gradient = torch.nan_to_num(gradient, nan=0.0, posinf=0.0, neginf=0.0)
            copies = {
                name: signed_step(inputs, gradient, AUGMENTATIONS[name] * self.epsilon, clip_range=self.clip_range)
                for name in self.adversarial
            }
        elif self.adversarial:
            adversarial, inverse = fgsm_pair(
                self.network, inputs, targets, self.epsilon, loss_fn=self.attack_loss_fn, clip_range=self.clip_range
            )
            copies = {"fgsm": adversarial, "inverse_fgsm": inverse}
        if "gaussian" in self.augmentations:
            copies["gaussian"] = inputs + self.noise_sigma * torch.randn_like(inputs)  # not clipped: see the class
        return {name: copies[name] for name in self.augmentations}

    def _accumulation(self) -> tuple[bool, bool]:
        """Whether this iteration zeroes the gradients first and steps the optimizer last.

        The rule of MONAI's :class:`~monai.engines.SupervisedTrainer`: one step per ``accumulation_steps`` iterations,
        counted within the epoch when its length is known, with a last step at the end of an epoch whose length is
        not a multiple (no gradient is silently dropped).

        Returns:
            ``(zero_grad, step)``.
        """
        steps = self.accumulation_steps
        if steps == 1:
            return True, True
        epoch_length = self.state.epoch_length
        if epoch_length is not None:
            local = (self.state.iteration - 1) % epoch_length
            return local % steps == 0, (local + 1) % steps == 0 or local + 1 == epoch_length
        local = self.state.iteration - 1
        return local % steps == 0, (local + 1) % steps == 0

    def _iteration(self, engine: AdversarialAugmentationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[:2]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        image_meta = label_meta = None
        if engine.compile:
            # MONAI's workaround for https://github.com/pytorch/pytorch/issues/117026: a compiled network must see
            # plain tensors; the outputs get the MetaTensor information back at the end of the iteration.
            if isinstance(inputs, MetaTensor):
                image_meta = (inputs.meta, inputs.applied_operations)
                inputs = inputs.as_tensor()
            if isinstance(targets, MetaTensor):
                label_meta = (targets.meta, targets.applied_operations)
                targets = targets.as_tensor()
        plain_inputs = inputs.as_subclass(torch.Tensor).detach()
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        weight_total = 1.0 + sum(engine.loss_weights.values())
        # Gradient accumulation scales every backward by 1 / accumulation_steps, as SupervisedTrainer does; the losses
        # in engine.state.output stay unscaled.
        backward_scale = weight_total * engine.accumulation_steps
        zero_grad, step = engine._accumulation()
        reuse = engine.reuse_gradient and bool(engine.adversarial)

        copies = None if reuse or not engine.augmentations else engine._copies(plain_inputs, targets, None)
        engine.network.train()
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        clean_inputs = plain_inputs.clone().requires_grad_(True) if reuse else inputs
        with engine._autocast():
            engine.state.output[Keys.PRED] = engine.inferer(clean_inputs, engine.network, *args, **kwargs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            clean_loss = engine.loss_function(engine.state.output[Keys.PRED], targets).mean()
        engine.state.output["loss_clean"] = clean_loss.detach()
        objective = clean_loss.detach() / weight_total
        engine._backward(clean_loss / backward_scale)
        if reuse:
            copies = engine._copies(plain_inputs, targets, clean_inputs.grad)

        for name, image in (copies or {}).items():
            twins = engine.auxiliary_bn and name in engine.adversarial  # the noisy copy: main batch norm
            with engine._autocast(), auxiliary_bn(engine.network, twins):
                copy_loss = engine.loss_function(engine.inferer(image, engine.network, *args, **kwargs), targets).mean()
            engine.state.output[f"loss_{name}"] = copy_loss.detach()
            objective = objective + engine.loss_weights[name] * copy_loss.detach() / weight_total
            engine._backward(engine.loss_weights[name] * copy_loss / backward_scale)
        # LOSS_COMPLETED once every term is known, so that handlers never see a partial sum under "loss"
        engine.state.output[Keys.LOSS] = objective
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)

        if step:
            if engine.scaler is not None:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                engine.optimizer.step()
        if image_meta is not None:
            engine.state.output[Keys.IMAGE] = MetaTensor(inputs, meta=image_meta[0], applied_operations=image_meta[1])
            engine.state.output[Keys.PRED] = MetaTensor(
                engine.state.output[Keys.PRED], meta=image_meta[0], applied_operations=image_meta[1]
            )
        if label_meta is not None:
            engine.state.output[Keys.LABEL] = MetaTensor(targets, meta=label_meta[0], applied_operations=label_meta[1])
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
