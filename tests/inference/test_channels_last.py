"""channels_last_view: the network's own outputs, channels-last, on the same parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vesselfm.inference.channels_last import channels_last_view


def _assert_channels_last_close(
    view: nn.Module, net: nn.Module, x: torch.Tensor, atol: float
) -> None:
    with torch.inference_mode():
        want, got = net(x), view(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


def test_tiny_dynunet_gives_the_networks_logits(tiny_net: nn.Module) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 1, 40, 32, 24)  # two windows: the per-sample norm path
    _assert_channels_last_close(channels_last_view(tiny_net), tiny_net, x, atol=1e-4)


def test_output_and_every_activation_stay_channels_last(tiny_net: nn.Module) -> None:
    seen: list[bool] = []
    view = channels_last_view(tiny_net)

    def record(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 5 and min(out.shape[1:]) > 1:
            seen.append(out.is_contiguous(memory_format=torch.channels_last_3d))

    # the swapped layers and the activations (the wrapped torch layers inside may differ)
    layers = [m for m in view.modules() if type(m).__module__.endswith("channels_last")]
    layers += [m for m in view.modules() if isinstance(m, nn.LeakyReLU)]
    hooks = [m.register_forward_hook(record) for m in layers]
    with torch.inference_mode():
        view(torch.randn(1, 1, 32, 32, 32))
    for h in hooks:
        h.remove()
    assert seen and all(seen)


@pytest.mark.parametrize("bias", [False, True])
def test_swapped_layers_equal_torchs(bias: bool) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1, bias=bias),  # one input channel
        nn.InstanceNorm3d(8, affine=True),
        nn.LeakyReLU(0.01),
        nn.Conv3d(8, 6, 1, stride=2, bias=bias),  # 1x1x1 with stride
        nn.Conv3d(6, 6, (3, 1, 5), padding=(1, 0, 2), bias=bias),  # anything else
        nn.ConvTranspose3d(6, 4, 2, stride=2, bias=bias),
        nn.Conv3d(4, 1, 1, bias=bias),  # the output head
    ).eval()
    with torch.no_grad():  # non-trivial norm parameters
        net[1].weight.uniform_(0.5, 2.0)
        net[1].bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 1, 18, 14, 10) * 3 + 1
    _assert_channels_last_close(channels_last_view(net), net, x, atol=1e-4)


def test_a_five_voxel_single_channel_kernel() -> None:
    torch.manual_seed(3)
    net = nn.Conv3d(1, 4, 5, padding=2).eval()
    _assert_channels_last_close(channels_last_view(net), net, torch.randn(1, 1, 9, 11, 7), 1e-5)


def test_the_view_shares_the_weights_and_leaves_the_network_alone(tiny_net: nn.Module) -> None:
    before = [type(m) for m in tiny_net.modules()]
    view = channels_last_view(tiny_net)
    assert [type(m) for m in tiny_net.modules()] == before
    assert {p.data_ptr() for p in view.parameters()} == {
        p.data_ptr() for p in tiny_net.parameters()
    }
    x = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        first = next(tiny_net.parameters())
        saved = first.clone()
        first.mul_(0.5)  # training moves the weights: the view follows
        try:
            _assert_channels_last_close(view, tiny_net, x, atol=1e-4)
        finally:
            first.copy_(saved)


@pytest.mark.slow
def test_under_bf16_autocast_it_is_as_close_to_fp32_as_the_network(tiny_net: nn.Module) -> None:
    x = torch.randn(1, 1, 32, 32, 32)
    view = channels_last_view(tiny_net)
    with torch.inference_mode():
        fp32 = tiny_net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain, ours = tiny_net(x).float(), view(x).float()
    plain_err, ours_err = (plain - fp32).abs().max(), (ours - fp32).abs().max()
    assert ours_err < 0.1 and ours_err < 1.5 * plain_err


def test_training_through_the_view_gives_the_networks_gradients(tiny_net: nn.Module) -> None:
    # VesselSegLitModule's training step on a CPU runs the view (channels_last=auto): its loss
    # and gradients must be the network's up to float rounding. Instance norm makes fp32
    # gradients inexact either way (about 1e-3 of their norm from fp64's here), so the view is
    # held to the fp64 gradients as closely as the network's own fp32 pass is.
    net = tiny_net.train()
    torch.manual_seed(2)
    x = torch.randn(2, 1, 32, 24, 16)
    target = (torch.rand(2, 1, 32, 24, 16) > 0.8).float()

    def gradients(model: nn.Module, params: list[torch.Tensor], dtype: torch.dtype):
        for p in params:
            p.grad = None
        logits = model(x.to(dtype))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target.to(dtype))
        loss.backward()
        return float(loss), torch.cat([p.grad.double().flatten() for p in params])

    params = list(net.parameters())
    plain_loss, plain = gradients(net, params, torch.float32)
    view_loss, view = gradients(channels_last_view(net), params, torch.float32)
    exact_net = copy.deepcopy(net).double()
    _, exact = gradients(exact_net, list(exact_net.parameters()), torch.float64)

    assert view_loss == pytest.approx(plain_loss, abs=1e-5)
    plain_error = float((plain - exact).norm() / exact.norm())
    view_error = float((view - exact).norm() / exact.norm())
    assert view_error < 0.01 and view_error < 3 * plain_error
