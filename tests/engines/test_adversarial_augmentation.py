import copy
import math

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines.utils import IterationEvents
from tiny_models import disk_batch, small_unet

from monai_advseg.attacks import signed_step
from monai_advseg.engines import AdversarialAugmentationTrainer


def _loader(batch: int = 4) -> DataLoader:
    images, labels = disk_batch(batch, seed=2)
    data = [{"image": image, "label": label} for image, label in zip(images, labels, strict=True)]
    return DataLoader(Dataset(data), batch_size=batch, shuffle=False)


def _trainer(network, device: torch.device | str = "cpu", loader=None, **kwargs) -> AdversarialAugmentationTrainer:
    """The trainer on ``device`` (the network is moved there; MONAI's trainers move batches, not networks)."""
    network.to(device)
    loss = torch.nn.CrossEntropyLoss()
    return AdversarialAugmentationTrainer(
        device=torch.device(device),
        max_epochs=1,
        train_data_loader=_loader() if loader is None else loader,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01),
        loss_function=lambda pred, label: loss(pred, label[:, 0].long()),
        **kwargs,
    )


def _record_calls(network):
    inputs, backward = [], []

    def hook(module, args, output):
        inputs.append(args[0].detach().clone())
        if output.requires_grad:
            output.register_hook(lambda grad: backward.append(1))

    network.register_forward_hook(hook)
    return inputs, backward


@pytest.mark.parametrize("reuse", [True, False])
def test_one_iteration_trains_on_clean_and_both_copies(reuse, device):
    network = small_unet()
    before = copy.deepcopy(network.state_dict())
    trainer = _trainer(network, device, augmentations="both", epsilon=0.05, clip_range=(0, 1), reuse_gradient=reuse)
    inputs, backward = _record_calls(network)
    trainer.run()
    output = trainer.state.output[0]  # decollated per sample; the losses are copied to each
    # one forward per pass: the separate attack adds one forward and one input-only backward
    assert len(inputs) == (3 if reuse else 4)
    assert len(backward) == len(inputs)
    assert {"loss_clean", "loss_fgsm", "loss_inverse_fgsm"} <= set(output)
    expected = (output["loss_clean"] + output["loss_fgsm"] + output["loss_inverse_fgsm"]) / 3
    assert output["loss"] == pytest.approx(expected, rel=1e-5)
    assert output["loss_fgsm"] > output["loss_clean"] > output["loss_inverse_fgsm"]
    assert all(x.device.type == torch.device(device).type for x in inputs)  # every pass ran on the device
    changed = [not torch.equal(before[k], v.cpu()) for k, v in network.state_dict().items() if k.endswith("weight")]
    assert all(changed)
    # batch norm counts the clean pass and the two copies, never the attack pass
    tracked = [v for k, v in network.state_dict().items() if k.endswith("num_batches_tracked")]
    assert all(int(v) == 3 for v in tracked)


def test_reused_gradient_copies_are_the_signed_training_loss_gradient(device):
    network = small_unet()
    reference = copy.deepcopy(network).to(device).train()
    images, labels = (t.to(device) for t in disk_batch(4, seed=2))
    x = images.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(reference(x), labels[:, 0]).backward()
    trainer = _trainer(network, device, augmentations=("fgsm", "inverse_fgsm"), epsilon=0.05, clip_range=(0, 1))
    inputs, _ = _record_calls(network)
    trainer.run()
    assert torch.equal(inputs[1], signed_step(images, x.grad, 0.05, clip_range=(0, 1)))
    assert torch.equal(inputs[2], signed_step(images, x.grad, -0.05, clip_range=(0, 1)))


def test_loss_weights_and_a_single_augmentation(device):
    network = small_unet()
    trainer = _trainer(network, device, augmentations="inverse_fgsm", epsilon=0.05, loss_weights={"inverse_fgsm": 0.5})
    inputs, _ = _record_calls(network)
    trainer.run()
    output = trainer.state.output[0]  # decollated per sample; the losses are copied to each
    assert len(inputs) == 2 and "loss_fgsm" not in output
    assert output["loss"] == pytest.approx((output["loss_clean"] + 0.5 * output["loss_inverse_fgsm"]) / 1.5, rel=1e-5)


def test_no_augmentation_is_plain_supervised_training(device):
    torch.manual_seed(0)
    ours = small_unet()
    theirs = copy.deepcopy(ours).to(device)
    _trainer(ours, device, augmentations="none").run()
    from monai.engines import SupervisedTrainer

    loss = torch.nn.CrossEntropyLoss()
    SupervisedTrainer(
        device=torch.device(device),
        max_epochs=1,
        train_data_loader=_loader(),
        network=theirs,
        optimizer=torch.optim.SGD(theirs.parameters(), lr=0.01),
        loss_function=lambda pred, label: loss(pred, label[:, 0].long()),
    ).run()
    for key, value in ours.state_dict().items():
        assert torch.allclose(value.float(), theirs.state_dict()[key].float(), atol=1e-6), key


def test_events_fire_and_amp_follows_the_device(device):
    """AMP autocasts to bfloat16 without a scaler on CPU, to float16 with a GradScaler on CUDA."""
    network = small_unet()
    trainer = _trainer(network, device, augmentations="both", epsilon=0.05, amp=True)
    fired, dtypes = [], []
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: dtypes.append(e.state.output["pred"].dtype))
    for event in (IterationEvents.LOSS_COMPLETED, IterationEvents.BACKWARD_COMPLETED, IterationEvents.MODEL_COMPLETED):
        trainer.add_event_handler(event, lambda e, name=event.name: fired.append(name))
    trainer.run()
    assert fired == ["LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"]
    on_cuda = torch.device(device).type == "cuda"
    assert dtypes == [torch.float16 if on_cuda else torch.bfloat16]
    assert math.isfinite(trainer.state.output[0]["loss"])
    if on_cuda:
        assert isinstance(trainer.scaler, torch.amp.GradScaler) and trainer.scaler.get_scale() > 0
    else:
        assert trainer.scaler is None


@pytest.mark.parametrize("augmentations, weights", [("both", {"fgsm": 0.5}), ("none", None)])
def test_handlers_see_the_whole_objective_as_loss_from_loss_completed_on(augmentations, weights, device):
    trainer = _trainer(small_unet(), device, augmentations=augmentations, epsilon=0.05, loss_weights=weights)
    seen = {}

    def record(engine, name):
        output = engine.state.output
        seen[name] = {key: float(value) for key, value in output.items() if key.startswith("loss")}

    # (from MODEL_COMPLETED on, MONAI's decollation has turned the output into a per-sample list)
    for event in (IterationEvents.LOSS_COMPLETED, IterationEvents.BACKWARD_COMPLETED):
        trainer.add_event_handler(event, record, event.name)
    trainer.run()
    names = trainer.augmentations
    weight = {name: (weights or {}).get(name, 1.0) for name in names}
    at_loss = seen["LOSS_COMPLETED"]
    assert set(at_loss) == {"loss", "loss_clean", *(f"loss_{name}" for name in names)}  # every term is known
    objective = (at_loss["loss_clean"] + sum(weight[n] * at_loss[f"loss_{n}"] for n in names)) / (
        1 + sum(weight.values())
    )
    assert at_loss["loss"] == pytest.approx(objective, rel=1e-6)
    if not names:
        assert at_loss["loss"] == at_loss["loss_clean"]  # no copies: the objective is the clean loss
    assert seen["BACKWARD_COMPLETED"] == at_loss
    assert float(trainer.state.output[0]["loss"]) == pytest.approx(at_loss["loss"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"augmentations": "fgsm_plus"}, "unknown augmentation"),
        ({"augmentations": ["fgsm", "fgsm"]}, "must not repeat"),
        ({"epsilon": -0.1}, "epsilon must be a number >= 0"),
        ({"clip_range": (1, 0)}, "lo < hi"),
        ({"augmentations": "fgsm", "loss_weights": {"inverse_fgsm": 1.0}}, "not in augmentations"),
    ],
)
def test_bad_configuration_fails_before_training(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _trainer(small_unet(), **kwargs)


def _batches_loader(batches: int, batch: int = 2) -> DataLoader:
    images, labels = disk_batch(batches * batch, seed=3)
    data = [{"image": image, "label": label} for image, label in zip(images, labels, strict=True)]
    return DataLoader(Dataset(data), batch_size=batch, shuffle=False)


def _parameters(network) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in network.named_parameters()}


@pytest.mark.parametrize("reuse", [True, False])
def test_accumulation_steps_step_once_per_group_with_the_mean_gradient(reuse):
    """accumulation_steps=2 over 3 batches: steps after iterations 2 and 3 (the end-of-epoch flush), as
    SupervisedTrainer does, and the first step is the mean of the two batches' objective gradients: with plain SGD,
    the mean of the parameters that one step on each batch alone gives. (Instance norm: with batch norm, the separate
    eval-mode attack of batch 2 would see running statistics that batch 1 has already updated.)"""
    torch.manual_seed(0)
    start = small_unet(norm="instance")
    settings = dict(augmentations="both", epsilon=0.05, clip_range=(0, 1), reuse_gradient=reuse)
    network = copy.deepcopy(start)
    trainer = _trainer(network, loader=_batches_loader(3), accumulation_steps=2, **settings)
    snapshots = [_parameters(network)]
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: snapshots.append(_parameters(network)))
    trainer.run()
    changed = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(snapshots, snapshots[1:], strict=False)]
    assert changed == [False, True, True]

    single = []
    for index in range(2):
        alone = copy.deepcopy(start)
        batch = next(item for i, item in enumerate(_batches_loader(3)) if i == index)
        _trainer(alone, loader=[batch], **settings).run()
        single.append(_parameters(alone))
    for name, value in snapshots[2].items():
        torch.testing.assert_close(value, (single[0][name] + single[1][name]) / 2, rtol=1e-5, atol=1e-6)


def test_accumulation_without_augmentation_matches_supervised_trainer():
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    ours = small_unet()
    theirs = copy.deepcopy(ours)
    _trainer(ours, loader=_batches_loader(3), augmentations="none", accumulation_steps=2).run()
    loss = torch.nn.CrossEntropyLoss()
    SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_batches_loader(3),
        network=theirs,
        optimizer=torch.optim.SGD(theirs.parameters(), lr=0.01),
        loss_function=lambda pred, label: loss(pred, label[:, 0].long()),
        accumulation_steps=2,
    ).run()
    for key, value in ours.state_dict().items():
        assert torch.allclose(value.float(), theirs.state_dict()[key].float(), atol=1e-6), key


@pytest.mark.parametrize("reuse, auxiliary", [(True, False), (False, False), (True, True)])
def test_compiled_network_sees_plain_tensors_and_outputs_keep_the_meta(reuse, auxiliary):
    """compile=True as in SupervisedTrainer: the compiled network never gets a MetaTensor (pytorch issue 117026),
    and image, label and pred carry the batch's meta again; training is the same as without compile."""
    from monai.data import MetaTensor

    images, labels = disk_batch(4, seed=2)
    data = [
        {"image": MetaTensor(image, meta={"tag": "img"}), "label": MetaTensor(label, meta={"tag": "lab"})}
        for image, label in zip(images, labels, strict=True)
    ]
    settings = dict(augmentations="both", epsilon=0.05, clip_range=(0, 1), reuse_gradient=reuse, decollate=False)
    settings["auxiliary_bn"] = auxiliary
    torch.manual_seed(0)
    network = small_unet()
    if auxiliary:  # the compiled network switches to the twins for the copies as the eager one does
        from monai_advseg.networks import convert_to_auxiliary_bn

        convert_to_auxiliary_bn(network)
    plain = copy.deepcopy(network)
    seen = []
    network.register_forward_pre_hook(lambda module, args: seen.append(type(args[0])))
    # the eager backend runs Dynamo's tracing without needing a C compiler for Inductor
    loader = DataLoader(Dataset(data), batch_size=4)
    trainer = _trainer(network, loader=loader, compile=True, compile_kwargs={"backend": "eager"}, **settings)
    trainer.run()
    assert seen and all(kind is torch.Tensor for kind in seen)
    output = trainer.state.output
    for key, tag in (("image", "img"), ("label", "lab"), ("pred", "img")):
        assert isinstance(output[key], MetaTensor) and output[key].meta["tag"][0] == tag, key
    _trainer(plain, loader=loader, **settings).run()
    for name, value in _parameters(plain).items():
        torch.testing.assert_close(_parameters(network)[name], value, rtol=1e-5, atol=1e-6)
    twins = [m.auxiliary_bn for m in network.modules() if hasattr(m, "auxiliary_bn")]
    assert len(twins) == (6 if auxiliary else 0)
    assert all(int(twin.num_batches_tracked) == 2 for twin in twins)  # the compiled copies went through the twins


# ------------------------------------------------------------------------------------------- auxiliary batch norm
def _batch_norms(network) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in network.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def _running(layers) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    return {n: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for n, m in layers.items()}


@pytest.mark.parametrize("reuse", [True, False])
def test_auxiliary_twins_see_only_the_copies_and_the_main_batch_norm_only_the_clean_batch(reuse, device):
    """One iteration: the main running statistics are those of the clean batch alone (a plain network's after a
    clean-only forward), the twins' are those of the two copies (a plain network's after forwarding them)."""
    from monai_advseg.networks import auxiliary_bn_layers, convert_to_auxiliary_bn

    torch.manual_seed(0)
    start = small_unet()
    network = convert_to_auxiliary_bn(copy.deepcopy(start))
    settings = dict(augmentations="both", epsilon=0.05, clip_range=(0, 1), reuse_gradient=reuse, auxiliary_bn=True)
    trainer = _trainer(network, device, **settings)
    inputs, _ = _record_calls(network)
    trainer.run()
    copies = inputs[-2:]  # the last two forwards are the FGSM and inverse-FGSM copies
    layers = auxiliary_bn_layers(network)
    assert all(int(m.num_batches_tracked) == 1 for m in layers.values())
    assert all(int(m.auxiliary_bn.num_batches_tracked) == 2 for m in layers.values())

    clean_only = copy.deepcopy(start).to(device).train()
    copies_only = copy.deepcopy(start).to(device).train()
    images, _ = disk_batch(4, seed=2)
    with torch.no_grad():
        clean_only(images.to(device))
        for image in copies:
            copies_only(image)
    expected_main, expected_twin = _running(_batch_norms(clean_only)), _running(_batch_norms(copies_only))
    for name, layer in layers.items():
        for got, want in zip(_running({name: layer})[name], expected_main[name], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for got, want in zip(_running({name: layer.auxiliary_bn})[name], expected_twin[name], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_auxiliary_bn_checkpoint_loads_strictly_into_the_plain_network_with_the_same_eval_outputs(tmp_path):
    from monai_advseg.networks import convert_to_auxiliary_bn

    torch.manual_seed(0)
    network = convert_to_auxiliary_bn(small_unet())
    trainer = _trainer(network, loader=_batches_loader(3), augmentations="both", epsilon=0.05, auxiliary_bn=True)
    trainer.run()
    torch.save(network.state_dict(), tmp_path / "model.pt")
    plain = small_unet()
    plain.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    images, _ = disk_batch(4, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(images), network.eval()(images), rtol=0, atol=0)
    # and the twins did train: they differ from the main batch norm they were copied from
    assert any(
        not torch.equal(layer.weight, layer.auxiliary_bn.weight)
        for layer in network.modules()
        if hasattr(layer, "auxiliary_bn")
    )


@pytest.mark.parametrize("reuse", [True, False])
def test_auxiliary_bn_keeps_the_loss_and_event_semantics(reuse, device):
    from monai_advseg.networks import convert_to_auxiliary_bn

    network = convert_to_auxiliary_bn(small_unet())
    trainer = _trainer(
        network, device, augmentations="both", epsilon=0.05, reuse_gradient=reuse, auxiliary_bn=True, amp=True
    )
    fired, at_loss = [], {}
    trainer.add_event_handler(
        IterationEvents.LOSS_COMPLETED,
        lambda e: at_loss.update({k: float(v) for k, v in e.state.output.items() if k.startswith("loss")}),
    )
    for event in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ):
        trainer.add_event_handler(event, lambda e, name=event.name: fired.append(name))
    trainer.run()
    assert fired == ["FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED"]
    assert set(at_loss) == {"loss", "loss_clean", "loss_fgsm", "loss_inverse_fgsm"}
    expected = (at_loss["loss_clean"] + at_loss["loss_fgsm"] + at_loss["loss_inverse_fgsm"]) / 3
    assert at_loss["loss"] == pytest.approx(expected, rel=1e-5) and math.isfinite(at_loss["loss"])
    assert at_loss["loss_fgsm"] > at_loss["loss_inverse_fgsm"]


def test_auxiliary_bn_resumes_to_the_same_weights(tmp_path):
    """Two epochs in one go equal one epoch, a weights-only checkpoint (network + twins + optimizer), then one more."""
    from monai_advseg.networks import AuxiliaryBatchNormState, convert_to_auxiliary_bn

    def fresh(start):
        network = convert_to_auxiliary_bn(copy.deepcopy(start))
        return network, torch.optim.Adam(network.parameters(), lr=1e-3)

    def run(network, optimizer, epochs):
        loss = torch.nn.CrossEntropyLoss()
        AdversarialAugmentationTrainer(
            device=torch.device("cpu"),
            max_epochs=epochs,
            train_data_loader=_batches_loader(2),
            network=network,
            optimizer=optimizer,
            loss_function=lambda pred, label: loss(pred, label[:, 0].long()),
            augmentations="both",
            epsilon=0.05,
            auxiliary_bn=True,
        ).run()

    torch.manual_seed(0)
    start = small_unet()
    straight, straight_optimizer = fresh(start)
    run(straight, straight_optimizer, 2)

    first, first_optimizer = fresh(start)
    run(first, first_optimizer, 1)
    state = {
        "network": first.state_dict(),
        "auxiliary_bn": AuxiliaryBatchNormState(first).state_dict(),
        "optimizer": first_optimizer.state_dict(),
    }
    torch.save(state, tmp_path / "checkpoint.pt")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    resumed, resumed_optimizer = fresh(small_unet())
    resumed.load_state_dict(state["network"], strict=True)
    AuxiliaryBatchNormState(resumed).load_state_dict(state["auxiliary_bn"])
    resumed_optimizer.load_state_dict(state["optimizer"])
    run(resumed, resumed_optimizer, 1)
    for (name, got), want in zip(resumed.named_parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    for name, want in AuxiliaryBatchNormState(straight).state_dict().items():
        got = AuxiliaryBatchNormState(resumed).state_dict()[name]
        for key in want:
            torch.testing.assert_close(got[key].float(), want[key].float(), msg=f"{name}.{key}")


def test_auxiliary_bn_needs_a_converted_network_whose_twins_the_optimizer_trains():
    from monai_advseg.networks import convert_to_auxiliary_bn

    with pytest.raises(ValueError, match="UNet has no auxiliary batch norm"):
        _trainer(small_unet(), auxiliary_bn=True)
    network = small_unet()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)  # built before the conversion: misses the twins
    convert_to_auxiliary_bn(network)
    with pytest.raises(ValueError, match="optimizer does not train the twins"):
        AdversarialAugmentationTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=_loader(),
            network=network,
            optimizer=optimizer,
            loss_function=torch.nn.CrossEntropyLoss(),
            auxiliary_bn=True,
        )
    with pytest.raises(ValueError, match="auxiliary_bn must be true or false"):
        _trainer(small_unet(), auxiliary_bn="sometimes")
    with pytest.raises(ValueError, match="needs online copies"):
        _trainer(convert_to_auxiliary_bn(small_unet()), augmentations="none", auxiliary_bn=True)
