"""Figures for lesions (no retraining) beside ZF Table 3's retrained ablations.

Example:
    >>> sweep = zfwidgets.lesion_sweep(lens, images, labels, progress=False)
    >>> fig = plot_lesions(sweep, ablation=zfwidgets.ablation_table("zfnet-fashion"))
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .colours import BAR_COLOUR

__all__ = ["plot_lesions", "plot_ablation", "plot_ablation_curves"]


def _draw_ablation(ax, table):
    k = np.arange(len(table.variants))
    ax.barh(k - 0.2, table.train_error, 0.4, color="#8c8c8c", label="train error")
    ax.barh(k + 0.2, table.test_error, 0.4, color="#c44e52", label="test error")
    for i, te in enumerate(table.test_error):
        ax.text(te, i + 0.2, f" {te:.1%}", va="center", fontsize=7)
    ax.set_yticks(k, [f"{d}\n({p:,} params)" for d, p in zip(table.descriptions, table.parameters)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("error")
    ax.set_title(f"retrained ablations (ZF Table 3): {table.name}, {table.epochs} epochs each", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


def plot_ablation(table) -> Figure:
    """Train and test error of each retrained variant (ZF Table 3)."""
    fig = Figure(figsize=(6.5, 0.55 * len(table.variants) + 1.5), layout="constrained")
    _draw_ablation(fig.add_subplot(), table)
    return fig


def plot_ablation_curves(table) -> Figure:
    """Test error per epoch of each retrained variant: where each one stopped moving."""
    if not table.history:
        raise ValueError(f"the ablation table of {table.name} has no per-epoch curves")
    fig = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    for d, h in zip(table.descriptions, table.history):
        ax.plot([r["epoch"] for r in h], [1 - r["test_accuracy"] for r in h], marker=".", label=d)
    if table.check_epochs:
        ax.axvline(table.recipe_epochs + 0.5, color="0.6", lw=1, ls=":")
        ax.text(table.recipe_epochs + 0.6, 0.98, "plateau check", transform=ax.get_xaxis_transform(),
                fontsize=7, va="top", color="0.4")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error")
    ax.set_title(f"retrained ablations (ZF Table 3): {table.name}, test error per epoch", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_lesions(sweep, ablation=None) -> Figure:
    """Left: accuracy after knocking out each layer's channels, without retraining (the dashed line is the
    intact model). Right, when given: the retrained-ablation table."""
    cols = 2 if ablation is not None else 1
    fig = Figure(figsize=(5.5 * cols + 0.5, 4.2), layout="constrained")
    ax = fig.add_subplot(1, cols, 1)
    k = np.arange(len(sweep.lesions))
    acc = np.array([l.accuracy_after for l in sweep.lesions])
    ax.bar(k, np.nan_to_num(acc), color=BAR_COLOUR, width=0.7)
    for i, (a, l) in enumerate(zip(acc, sweep.lesions)):
        ax.text(i, 0.01 if np.isnan(a) else a, "n/a" if np.isnan(a) else f"{a:.0%}", ha="center",
                va="bottom", fontsize=7)
    ax.axhline(sweep.accuracy_before, ls="--", color="k", lw=1, label=f"intact {sweep.accuracy_before:.1%}")
    labels = []
    for l in sweep.lesions:
        what = "all" if l.channels is None else str(len(l.channels))
        labels.append(f"{l.layer}\n{l.mode} {what}" if l.mode != "skip" else f"{l.layer}\nskip")
    ax.set_xticks(k, labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"lesions without retraining ({sweep.n_images} images)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    if ablation is not None:
        _draw_ablation(fig.add_subplot(1, cols, 2), ablation)
    return fig
