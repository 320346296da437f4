"""Figures for linear probes per layer (ZF Table 7) and feature generalisation (ZF Tables 4-6).

Example:
    >>> probes = zfwidgets.layer_probes(lens, images[::2], labels[::2], images[1::2], labels[1::2],
    ...                                 ["conv1", "fc7"], progress=False)
    >>> fig = plot_layer_probes(probes)
    >>> len(fig.axes)
    1
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .colours import BAR_COLOUR

__all__ = ["plot_layer_probes", "plot_generalisation"]


def plot_layer_probes(probes) -> Figure:
    """Test and train accuracy of a softmax on each layer's frozen features, by depth."""
    fig = Figure(figsize=(max(5.0, 0.8 * len(probes.layers) + 1.5), 3.8), layout="constrained")
    ax = fig.add_subplot()
    k = np.arange(len(probes.layers))
    ax.plot(k, probes.train_accuracy, "o--", color="#8c8c8c", label="train")
    ax.plot(k, probes.test_accuracy, "o-", color=BAR_COLOUR, label="test")
    for i, a in enumerate(probes.test_accuracy):
        ax.annotate(f"{a:.1%}", (i, a), textcoords="offset points", xytext=(0, -13), ha="center", fontsize=7)
    ax.set_xticks(k, [f"{l}\n{d} feat." for l, d in zip(probes.layers, probes.feature_dim)], fontsize=7)
    ax.set_ylabel("accuracy")
    pool = f"maps pooled to {probes.grid}x{probes.grid}" if probes.grid else "full maps"
    ax.set_title(f"linear probes per layer (ZF Table 7): {probes.model}; softmax, {pool}, "
                 f"{probes.n_train} train / {probes.n_test} test", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def plot_generalisation(gen) -> Figure:
    """Test accuracy against N training examples per class: frozen features + softmax vs from scratch."""
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    n = gen.n_per_class
    for acc, label, style in ((gen.frozen_accuracy, f"frozen {gen.layer} + new softmax", "o-"),
                              (gen.scratch_accuracy, "same architecture from scratch", "s--")):
        if np.isnan(acc).all():
            continue
        m, s = np.nanmean(acc, 0), np.nanstd(acc, 0)
        ax.errorbar(n, m, yerr=s if acc.shape[0] > 1 else None, fmt=style, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(n, [str(v) for v in n])
    ax.set_xlabel("training examples per class")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"feature generalisation (ZF Tables 4-6): {gen.model} → {gen.dataset}", fontsize=9)
    ax.legend(fontsize=8)
    return fig
