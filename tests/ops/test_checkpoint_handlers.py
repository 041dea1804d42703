"""Atomic checkpoint saving, random-state capture and safe loading, on a tiny network (no data, a few seconds)."""

import os
import pickle
import random
import stat

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from monai_advseg.handlers import (
    AtomicCheckpointSaver,
    BestMetricState,
    RandomState,
    WeightsOnlyCheckpointLoader,
    attach_resume,
    load_weights_only,
    save_atomically,
)


def _engine_with_metric(values):
    """An evaluator-like engine whose key metric takes ``values[epoch - 1]``."""
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        e.state.metrics = {"dice": values[e.state.epoch - 1]}

    engine.state.key_metric_name = "dice"
    return engine


def _best_model_saver(tmp_path, network):
    return AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"network": network}, save_key_metric=True, key_metric_filename="model.pt"
    )


def test_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    network = torch.nn.Linear(3, 2)
    engine = _engine_with_metric([0.1, 0.5])
    saver = _best_model_saver(tmp_path, network)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    first = (tmp_path / "model.pt").read_bytes()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with torch.no_grad():
        network.weight.add_(1.0)

    real_save = torch.save

    def half_written(obj, f, *args, **kwargs):
        f.write(b"\x80\x02truncated checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        engine.run([0], max_epochs=2)  # epoch 2 improves the metric, so it saves, and the save fails
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no tmp* file left behind
    assert (tmp_path / "model.pt").read_bytes() == first
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], before[k]) for k in before)


def test_save_atomically_writes_and_keeps_the_previous_file_on_a_failed_save(tmp_path, monkeypatch):
    network = torch.nn.Linear(3, 2)
    path = save_atomically(network.state_dict(), tmp_path / "run" / "model.pt")  # creates the folder
    assert path == tmp_path / "run" / "model.pt"
    first = path.read_bytes()
    _assert_unchanged(network, torch.load(path, weights_only=True))

    def half_written(obj, f, *args, **kwargs):
        f.write(b"\x80\x02truncated checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_atomically(torch.nn.Linear(3, 2).state_dict(), path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no tmp* file left behind
    assert path.read_bytes() == first


def test_monai_saver_loses_the_fixed_name_file_on_a_failed_save(tmp_path, monkeypatch):
    """Why the atomic saver exists: MONAI's saver deletes model.pt before writing the new one, non-atomically."""
    from monai.handlers import CheckpointSaver

    engine = _engine_with_metric([0.1, 0.5])
    CheckpointSaver(
        save_dir=str(tmp_path), save_dict={"network": torch.nn.Linear(3, 2)}, save_key_metric=True,
        key_metric_filename="model.pt",
    ).attach(engine)  # fmt: skip
    engine.run([0], max_epochs=1)

    def half_written(obj, f, *args, **kwargs):
        (f.write if hasattr(f, "write") else open(f, "wb").write)(b"\x80\x02trunc")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError):
        engine.run([0], max_epochs=2)
    with pytest.raises(Exception):  # noqa: B017 - any load error: the old checkpoint is gone
        torch.load(tmp_path / "model.pt", weights_only=True)


def test_saved_file_is_group_and_world_readable_and_replaced_in_place(tmp_path):
    network = torch.nn.Linear(3, 2)
    engine = _engine_with_metric([0.1, 0.5, 0.2])
    _best_model_saver(tmp_path, network).attach(engine)
    engine.run([0], max_epochs=3)
    mode = (tmp_path / "model.pt").stat().st_mode
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_interval_checkpoint_uses_a_fixed_name_and_holds_every_object(tmp_path):
    network = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(network.parameters())
    trainer = Engine(lambda e, b: None)
    objects = {"network": network, "optimizer": optimizer, "trainer": trainer, "rng": RandomState()}
    AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict=objects, save_interval=2, epoch_level=False, n_saved=1,
        interval_filename="checkpoint.pt",
    ).attach(trainer)  # fmt: skip
    trainer.run([0, 1, 2], max_epochs=2)  # 6 iterations: saved at 2, 4, 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(state) == set(objects)
    assert state["trainer"]["iteration"] == 6


def test_random_state_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    torch.save({"rng": RandomState().state_dict()}, tmp_path / "rng.pt")
    expected = (torch.rand(4), np.random.normal(size=3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    RandomState().load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.normal(size=3), expected[1])
    assert random.random() == expected[2]


def test_best_metric_state_restores_the_evaluator_record():
    source, target = Engine(lambda e, b: None), Engine(lambda e, b: None)
    source.state.best_metric, source.state.best_metric_epoch = 0.75, 3
    BestMetricState(target).load_state_dict(BestMetricState(source).state_dict())
    assert (target.state.best_metric, target.state.best_metric_epoch) == (0.75, 3)


def test_resumed_saver_does_not_overwrite_a_better_model(tmp_path):
    network = torch.nn.Linear(3, 2)
    engine = _engine_with_metric([0.9])
    saver = _best_model_saver(tmp_path, network)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    best = (tmp_path / "model.pt").read_bytes()
    restored = _best_model_saver(tmp_path, network)
    restored.load_state_dict(saver.state_dict())
    later = _engine_with_metric([0.2])
    restored.attach(later)
    later.run([0], max_epochs=1)
    assert (tmp_path / "model.pt").read_bytes() == best


def test_attach_resume_modes(tmp_path):
    engine = Engine(lambda e, b: None)
    loader = CheckpointLoader(load_path=str(tmp_path / "checkpoint.pt"), load_dict={"trainer": engine})
    assert attach_resume(loader, engine, "false") is False
    assert attach_resume(loader, engine, "auto") is False
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        attach_resume(loader, engine, "true")
    with pytest.raises(ValueError, match="resume must be true or false"):
        attach_resume(loader, engine, "sometimes")
    torch.save({"trainer": {"iteration": 1, "max_epochs": 2, "epoch_length": 1}}, loader.load_path)
    assert attach_resume(loader, engine, True) is True
    engine.run([0], max_epochs=2)
    assert engine.state.iteration == 2  # one iteration done before, one after resuming


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_loader_refuses_a_pickled_payload(tmp_path):
    network = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    torch.save({"network": torch.nn.Linear(3, 2).state_dict(), "extra": _Payload()}, tmp_path / "evil.pt")
    # MONAI's own loader: torch's raw error, which names no file and advises weights_only=False
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        CheckpointLoader(load_path=str(tmp_path / "evil.pt"), load_dict={"network": network})(Engine(lambda e, b: 0))
    loader = WeightsOnlyCheckpointLoader(load_path=str(tmp_path / "evil.pt"), load_dict={"network": network})
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pt: it contains pickled Python objects") as error:
        loader(Engine(lambda e, b: None))
    assert "posix.system" in str(error.value) or "nt.system" in str(error.value)  # the refused object is named
    assert "weights_only=False" not in str(error.value)
    assert isinstance(error.value.__context__, pickle.UnpicklingError)  # torch's error is kept for debugging
    _assert_unchanged(network, before)
    with pytest.raises(ValueError, match=r"evil\.pt: it contains pickled"):
        load_weights_only(tmp_path / "evil.pt")


def test_weights_only_checkpoint_loader_loads_a_plain_checkpoint(tmp_path):
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save({"network": source.state_dict()}, tmp_path / "plain.pt")
    WeightsOnlyCheckpointLoader(load_path=str(tmp_path / "plain.pt"), load_dict={"network": target})(
        Engine(lambda e, b: None)
    )
    _assert_unchanged(target, source.state_dict())


def _assert_unchanged(network, state):
    for key, value in network.state_dict().items():
        assert torch.equal(value, state[key]), key
