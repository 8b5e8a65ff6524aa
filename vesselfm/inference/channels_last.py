"""A channels-last view of a 3D segmentation network for fp32/bf16 inference on CPUs.

PyTorch runs ``Conv3d`` on a CPU through oneDNN; fed ``NCDHW`` tensors it reorders every
activation to a blocked layout and back, and its direct kernels are slower on that layout than
on channels-last (``NDHWC``): a 32→32 3×3×3 convolution of a 128³ window takes 1.1 s in
``NCDHW`` and 0.67 s in channels-last on a 2-core AVX-512 CPU, fp32. Channels-last through the
whole network needs every other layer to keep that layout, which three of DynUNet's layers do
not do well in eager PyTorch:

- ``InstanceNorm3d`` reshapes its input to ``(1, N·C, …)``, which copies a channels-last tensor
  to ``NCDHW`` and back (two extra passes per norm): with one sample it is batch norm with batch
  statistics, whose native kernel handles channels-last directly;
- 1×1×1 convolutions (the residual projections and the output head) fall to PyTorch's slow
  ``im2col`` path for small inputs: a matrix product over the channel axis (a broadcast product
  for one input channel) computes the same sums;
- the first convolution (one input channel) also takes the slow path and returns ``NCDHW``:
  computed as a channels-last 2D convolution over the depth slices, each slice's depth
  neighbours taken as its input channels.

:func:`channels_last_view` builds, around the same parameters (nothing is copied, so a model
that is still training is always seen with its current weights), a module tree whose forward
is the network's forward with those three layers swapped and channels-last windows. Its outputs
equal the network's up to float rounding (the sums run in another order; largest logit
difference about 2e-3 on the base model in fp32, ``tests/inference/test_channels_last.py``).
Used by :class:`~vesselfm.inference.predictor.SlidingWindowPredictor` on CPUs
(``inference.cpu.channels_last``, on by default).

Still here after the inference engines came (issue 20, ``inference.backend``): on the 2-core
AVX2 box OpenVINO f32 beat this view per window (README, "python -m vesselfm.export"), so
``inference.backend=auto`` runs OpenVINO where it is installed; this view remains the torch CPU
path: where no engine is installed (the base install), for training's validation (weights that
change every epoch, never exported), and on AVX-512 CPUs, where no engine was measured against
it (an AVX2 machine cannot emulate AVX-512).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class _InstanceNormChannelsLast(nn.Module):
    """``InstanceNorm3d`` without running statistics, computed per sample as batch norm."""

    def __init__(self, norm: nn.InstanceNorm3d) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm
        if x.dim() != 5:
            return n(x)
        if x.shape[0] > 1:
            return torch.cat([self(x[i : i + 1]) for i in range(x.shape[0])])
        # Under autocast the weights stay fp32 and batch_norm wants one dtype.
        w = None if n.weight is None else n.weight.to(x.dtype)
        b = None if n.bias is None else n.bias.to(x.dtype)
        return F.batch_norm(x, None, None, w, b, True, 0.0, n.eps)


def _conv_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``conv`` computes in: autocast's lower precision if on, else the input's."""
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def _channels_last_output(y: torch.Tensor) -> torch.Tensor:
    """``(N, D, H, W, C)`` → ``(N, C, D, H, W)`` view, which is channels-last in memory."""
    return y.permute(0, 4, 1, 2, 3)


class _PointwiseConv(nn.Module):
    """A 1×1×1 ``Conv3d`` (any stride) as a product over the channel axis."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        dtype = _conv_dtype(x)
        s = c.stride
        x = x[:, :, :: s[0], :: s[1], :: s[2]].permute(0, 2, 3, 4, 1).to(dtype)
        w = c.weight.flatten(1).t().to(dtype)  # (C_in, C_out)
        y = x * w[0] if w.shape[0] == 1 else torch.matmul(x, w)
        if c.bias is not None:
            y = y + c.bias.to(dtype)
        return _channels_last_output(y)


class _SingleChannelConv(nn.Module):
    """A stride-1 ``Conv3d`` with one input channel and odd 'same' padding, as a 2D convolution
    over each depth slice whose ``kd`` input channels are the slice and its depth neighbours
    (zeros outside): oneDNN's channels-last 2D kernel, and its ``(D, C, H, W)`` channels-last
    output is the ``(1, C, D, H, W)`` channels-last result."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        dtype = _conv_dtype(x)
        kd = c.kernel_size[0]
        pd, ph, pw = c.padding
        n, _, d, h, w = x.shape
        padded = F.pad(x[:, 0].to(dtype), (0, 0, 0, 0, pd, pd))  # (N, D + 2pd, H, W)
        slabs = padded.unfold(1, kd, 1).reshape(n * d, h, w, kd).permute(0, 3, 1, 2)
        slabs = slabs.contiguous(memory_format=torch.channels_last)  # (N·D, kd, H, W)
        bias = None if c.bias is None else c.bias.to(dtype)
        y = F.conv2d(slabs, c.weight[:, 0].to(dtype), bias, padding=(ph, pw))
        y = y.contiguous(memory_format=torch.channels_last)  # (N·D, C, H, W) as (N·D, H, W, C)
        return _channels_last_output(y.permute(0, 2, 3, 1).reshape(n, d, h, w, -1))


class _ChannelsLastConv(nn.Module):
    """Any other convolution: its output made channels-last (PyTorch's small-input path,
    e.g. 320 channels at 8³, returns ``NCDHW``, which would turn the rest of the decoder
    back to ``NCDHW``)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).contiguous(memory_format=torch.channels_last_3d)


def _pointwise(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv3d
        and tuple(m.kernel_size) == (1, 1, 1)
        and tuple(m.padding) == (0, 0, 0)
        and tuple(m.dilation) == (1, 1, 1)
        and m.groups == 1
    )


def _single_channel(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv3d
        and m.in_channels == 1
        and m.groups == 1
        and m.padding_mode == "zeros"
        and tuple(m.stride) == (1, 1, 1)
        and tuple(m.dilation) == (1, 1, 1)
        and not isinstance(m.padding, str)
        and all(k % 2 == 1 and p == k // 2 for k, p in zip(m.kernel_size, m.padding, strict=True))
    )


def _swap(m: nn.Module) -> nn.Module:
    if type(m) is nn.InstanceNorm3d and not m.track_running_stats:
        return _InstanceNormChannelsLast(m)
    if _pointwise(m):
        return _PointwiseConv(m)
    if _single_channel(m):
        return _SingleChannelConv(m)
    if type(m) in (nn.Conv3d, nn.ConvTranspose3d):
        return _ChannelsLastConv(m)
    view = copy.copy(m)  # shares parameters and buffers; children replaced below
    view._modules = {name: None if c is None else _swap(c) for name, c in m._modules.items()}
    return view


class _ChannelsLastInput(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.network(x)


def channels_last_view(network: nn.Module) -> nn.Module:
    """``network`` with channels-last windows and the swaps above, sharing its parameters.

    Args:
        network: a 3D network taking batched ``(N, C, D, H, W)`` windows (e.g. DynUNet).

    Returns:
        A module whose forward equals ``network``'s up to float rounding.

    Build it where it is used (it is cheap: no tensor is copied); the view follows later
    changes to the weights but not to the module tree or to train/eval mode, and the swapped
    layers do not run hooks registered on the originals. Example::

        with torch.inference_mode():
            logits = channels_last_view(net.eval())(window)
    """
    return _ChannelsLastInput(_swap(network))


__all__ = ["channels_last_view"]
