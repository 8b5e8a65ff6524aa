"""VesselSegLitModule's training network: the channels-last view on a CPU, by ``channels_last``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vesselfm.models.lit_module import VesselSegLitModule


def _module(channels_last: object) -> VesselSegLitModule:
    return VesselSegLitModule(
        net=nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4), nn.Conv3d(4, 1, 1)),
        loss=nn.BCEWithLogitsLoss(),
        optimizer=torch.optim.AdamW,
        channels_last=channels_last,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("setting", ["auto", True])
def test_on_a_cpu_the_training_step_runs_the_channels_last_view(setting: object) -> None:
    module = _module(setting)
    net = module.training_network()
    assert net is not module.model
    x = torch.randn(2, 1, 12, 10, 8)
    out = net(x)
    # the view's output is channels-last and its gradient reaches the module's own weights
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    out.sum().backward()
    assert all(p.grad is not None for p in module.model.parameters())
    torch.testing.assert_close(out, module.model(x), atol=1e-5, rtol=0)


def test_channels_last_false_trains_the_network_itself() -> None:
    module = _module(False)
    assert module.training_network() is module.model


def test_the_view_follows_the_models_train_mode() -> None:
    module = _module("auto")
    module.model.append(nn.Dropout(p=0.5))
    x = torch.randn(1, 1, 12, 10, 8)
    module.model.eval()  # dropout off: the view computes the model's output
    torch.testing.assert_close(module.training_network()(x), module.model(x), atol=1e-5, rtol=0)
    module.model.train()  # dropout on in the view built now: about half the outputs zeroed
    zeros = float((module.training_network()(x) == 0).float().mean())
    assert 0.3 < zeros < 0.7


def test_an_unknown_setting_is_refused_with_one_line() -> None:
    with pytest.raises(ValueError, match=r"channels_last must be auto, true or false, got 'yes'"):
        _module("yes")
