"""convert_to_auxiliary_bn: a twin per batch-norm layer, not in the state dict, used only inside auxiliary_bn."""

import copy

import pytest
import torch
from monai.networks.nets import UNet
from tiny_models import small_unet
from torch import nn

from monai_advseg.networks import (
    NLCEN,
    AuxiliaryBatchNormState,
    NLCEUNet,
    auxiliary_bn,
    auxiliary_bn_layers,
    convert_to_auxiliary_bn,
    has_auxiliary_bn,
)


def _networks() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "unet": small_unet(),
        "nlcen": NLCEN(spatial_dims=2, in_channels=1, out_channels=2),
        "nlce_unet": NLCEUNet(2, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, norm="batch"),
        "custom": nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)),
    }


@pytest.mark.parametrize("name", list(_networks()))
def test_every_batch_norm_gets_a_twin_and_the_state_dict_stays_plain(name):
    network = _networks()[name]
    plain = copy.deepcopy(network)
    batch_norms = [n for n, m in plain.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batch_norms  # every test network has batch norm
    convert_to_auxiliary_bn(network)
    assert list(auxiliary_bn_layers(network)) == batch_norms
    assert has_auxiliary_bn(network) and not has_auxiliary_bn(plain)
    # the twins are trainable parameters of the network, but not in its state dict
    assert len(list(network.parameters())) == len(list(plain.parameters())) + 2 * len(batch_norms)
    assert list(network.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(network.state_dict(), strict=True)
    network.load_state_dict(plain.state_dict(), strict=True)  # a plain state dict loads into a converted network
    # outside auxiliary_bn the converted network is the plain one, in train and eval mode
    x = torch.rand(2, 1, 32, 32)
    for mode in (True, False):
        network.train(mode)
        plain.train(mode)
        torch.testing.assert_close(network(x), plain(x), rtol=0, atol=0)


def test_inside_the_context_only_the_twins_run_and_only_their_statistics_move():
    network = convert_to_auxiliary_bn(small_unet()).train()
    layers = auxiliary_bn_layers(network)
    main_before = {n: layer.running_mean.clone() for n, layer in layers.items()}
    with torch.no_grad(), auxiliary_bn(network):
        network(torch.rand(2, 1, 32, 32) + 1.0)
    for name, layer in layers.items():
        assert int(layer.num_batches_tracked) == 0 and torch.equal(layer.running_mean, main_before[name]), name
        assert int(layer.auxiliary_bn.num_batches_tracked) == 1, name
        assert not torch.equal(layer.auxiliary_bn.running_mean, main_before[name]), name
    assert not any(layer.use_auxiliary for layer in layers.values())  # the context restored the main batch norm
    with torch.no_grad():
        network(torch.rand(2, 1, 32, 32))
    assert all(int(layer.num_batches_tracked) == 1 for layer in layers.values())
    assert all(int(layer.auxiliary_bn.num_batches_tracked) == 1 for layer in layers.values())


def test_the_twin_changes_the_output_only_inside_the_context():
    network = convert_to_auxiliary_bn(small_unet()).eval()
    for layer in auxiliary_bn_layers(network).values():
        with torch.no_grad():
            layer.auxiliary_bn.bias.add_(0.5)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        main = network(x)
        with auxiliary_bn(network):
            twin = network(x)
        with auxiliary_bn(network, active=False):
            inactive = network(x)
    assert not torch.allclose(main, twin)
    assert torch.equal(main, inactive)


def test_twin_state_round_trips_and_a_mismatch_names_the_layers():
    network = convert_to_auxiliary_bn(small_unet()).train()
    with torch.no_grad(), auxiliary_bn(network):
        network(torch.rand(2, 1, 32, 32))
    saved = AuxiliaryBatchNormState(network).state_dict()
    fresh = convert_to_auxiliary_bn(small_unet())
    AuxiliaryBatchNormState(fresh).load_state_dict(saved)
    trained = auxiliary_bn_layers(network)
    for name, layer in auxiliary_bn_layers(fresh).items():
        assert torch.equal(layer.auxiliary_bn.running_mean, trained[name].auxiliary_bn.running_mean)
    assert AuxiliaryBatchNormState(small_unet()).state_dict() == {}  # plain network: empty, same config serves both
    with pytest.raises(ValueError, match=r"missing \['model.0.conv.unit0.adn.N'"):
        AuxiliaryBatchNormState(fresh).load_state_dict({})


def test_a_network_without_batch_norm_is_refused_by_name():
    with pytest.raises(ValueError, match="UNet has none"):
        convert_to_auxiliary_bn(UNet(2, 1, 2, channels=(8, 16), strides=(2,), norm="instance"))
    with pytest.raises(ValueError, match="has no auxiliary batch norm"):
        with auxiliary_bn(small_unet()):
            pass
    unchanged = small_unet()
    assert convert_to_auxiliary_bn(unchanged, enabled="false") is unchanged and not has_auxiliary_bn(unchanged)
    with pytest.raises(ValueError, match="auxiliary_bn must be true or false, got 'maybe'"):
        convert_to_auxiliary_bn(small_unet(), enabled="maybe")


def test_sync_batch_norm_keeps_its_class_and_converting_twice_changes_nothing():
    network = nn.SyncBatchNorm.convert_sync_batchnorm(small_unet())
    convert_to_auxiliary_bn(network)
    layers = auxiliary_bn_layers(network)
    assert layers and all(isinstance(layer, nn.SyncBatchNorm) for layer in layers.values())
    assert all(isinstance(layer.auxiliary_bn, nn.SyncBatchNorm) for layer in layers.values())
    count = len(list(network.parameters()))
    convert_to_auxiliary_bn(network)
    assert len(list(network.parameters())) == count
    assert copy.deepcopy(network).state_dict().keys() == network.state_dict().keys()


def test_a_whole_converted_network_pickles_and_keeps_its_twins(tmp_path):
    network = convert_to_auxiliary_bn(small_unet())
    torch.save(network, tmp_path / "whole.pt")
    loaded = torch.load(tmp_path / "whole.pt", weights_only=False)
    assert list(auxiliary_bn_layers(loaded)) == list(auxiliary_bn_layers(network))
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad(), auxiliary_bn(loaded.eval()):
        assert loaded(x).shape == (1, 2, 32, 32)
