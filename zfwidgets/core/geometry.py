"""Window arithmetic, once: a convolution's or pooling's window, how a region grows through it, batch-norm folding.

Per spatial axis a window node (convolution, max / average pooling) has a kernel ``k``, a stride ``s``, a
padding ``p`` (before) and a dilation ``d``. Its window covers :func:`extent` ``d * (k - 1) + 1`` input
positions; ``n`` consecutive output positions read :func:`grow` ``(n - 1) * s + d * (k - 1) + 1`` consecutive
input positions, starting at ``start * s - p`` (:func:`span`, which also gives that start; it may lie in the
padding). Every part of the package that follows a unit or a region through the model's windows (the graph,
the receptive fields, the cropped backward, the miner's walks, the occlusion engine) uses these.

A batch norm in eval mode is a per-channel affine map: :func:`batchnorm_scale` is its factor
``weight / sqrt(running_var + eps)`` and :func:`fold_batchnorm` the one convolution ``bn(conv(x))`` equals.

Example:
    >>> conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    >>> k, s, p, d, mode = window_params(conv)
    >>> extent(k[0], d[0]), grow(4, k[0], s[0], d[0]), span(5, 4, k[0], s[0], p[0], d[0])
    (3, 9, (9, 9))
"""
from __future__ import annotations

from numbers import Integral

import torch
from torch import nn

__all__ = ["pair", "window_params", "extent", "grow", "grow_hw", "span", "out_size", "batchnorm_scale",
           "fold_batchnorm"]


def pair(v) -> tuple:
    """An int or a pair of ints (a module's ``kernel_size``, ``stride``...) as ``(height, width)``."""
    return (int(v), int(v)) if isinstance(v, Integral) else (int(v[0]), int(v[1]))


def window_params(m: nn.Module):
    """Per axis ``(kernel, stride, padding_before, dilation)`` and the padding mode of a conv or pooling.

    >>> window_params(nn.Conv2d(1, 1, 5, padding="same", dilation=2))
    ((5, 5), (1, 1), (4, 4), (2, 2), 'zeros')
    """
    k = pair(m.kernel_size)
    s = pair(m.stride if m.stride is not None else m.kernel_size)
    d = pair(getattr(m, "dilation", 1))
    mode = getattr(m, "padding_mode", "zeros")
    if isinstance(m.padding, str):
        p = (0, 0) if m.padding == "valid" else tuple((extent(k[a], d[a]) - 1) // 2 for a in range(2))
    else:
        p = pair(m.padding)
    return k, s, p, d, mode


def extent(k, d=1):
    """The input positions one window covers along an axis: ``d * (k - 1) + 1``."""
    return d * (k - 1) + 1


def grow(n, k, s, d=1):
    """The input positions ``n`` consecutive output positions read along an axis: ``(n - 1) * s + extent``.

    >>> grow(1, 3, 2), grow(3, 3, 2), grow(2, 3, 1, 2)     # one unit: its window; dilation 2 spreads it
    (3, 7, 6)
    """
    return (n - 1) * s + extent(k, d)


def grow_hw(hw, k, s, d) -> tuple:
    """:func:`grow` on both axes: the ``h x w`` window at a node's output, at its input (``k, s, d`` pairs)."""
    return grow(hw[0], k[0], s[0], d[0]), grow(hw[1], k[1], s[1], d[1])


def span(start, n, k, s, p, d=1):
    """``(first input position, count)`` that output positions ``start .. start + n - 1`` read along an axis
    (the first may lie in the padding, before 0). ``start`` may be a number or an array."""
    return start * s - p, grow(n, k, s, d)


def out_size(n, k, s, p, d=1) -> int:
    """The output size of a window node on an input of size ``n`` (floor mode).

    >>> out_size(28, 5, 1, 2), out_size(224, 11, 4, 2)
    (28, 55)
    """
    return (n + 2 * p - extent(k, d)) // s + 1


def batchnorm_scale(bn: nn.Module) -> torch.Tensor:
    """A batch norm's per-channel factor in eval mode: ``weight / sqrt(running_var + eps)`` (detached)."""
    f = (bn.running_var.detach() + bn.eps).rsqrt()
    return f * bn.weight.detach() if bn.weight is not None else f


def fold_batchnorm(conv: nn.Conv2d, bn: nn.Module) -> tuple:
    """``(weight, bias)`` of the one convolution that equals ``bn(conv(x))`` in eval mode (detached).

    >>> conv, bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3).eval()
    >>> _ = bn.running_var.fill_(4.0)
    >>> w, b = fold_batchnorm(conv, bn)
    >>> x = torch.rand(1, 2, 5, 5)
    >>> torch.allclose(torch.nn.functional.conv2d(x, w, b), bn(conv(x)), atol=1e-6)
    True
    """
    scale = batchnorm_scale(bn)
    shift = -bn.running_mean.detach() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    w = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    b = shift if conv.bias is None else conv.bias.detach() * scale + shift
    return w, b
