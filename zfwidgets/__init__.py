"""zfwidgets: see inside a convolutional network from a notebook.

Zeiler & Fergus's deconvnet, guided backpropagation, top-9 activations, occlusion, invariance,
correspondence, feature evolution, lesions and probes, as plain functions and live panels.

Example:
    >>> import zfwidgets as zf
    >>> lens = zf.load("zfnet-fashion")
    >>> p = zf.project(lens, zf.samples()[0].image, "conv5", method="guided")
"""
from __future__ import annotations

import importlib

from .core.outputs import SegmentationScores
from .core.project import Projection, deconvnet_steps, project, render
from .lens import Forward, Lens
from .zoo import available, load, model_card, samples, snapshot_epochs

__version__ = "0.1.0"

# public names that live in modules imported on first use (analysis, plots and widgets are heavier)
_LAZY = {
    # analysis
    "top_activations": "zfwidgets.analysis.topk",
    "receptive_field": "zfwidgets.analysis.receptive",
    "occlusion": "zfwidgets.analysis.occlusion",
    "occlude": "zfwidgets.analysis.occlusion",
    "invariance": "zfwidgets.analysis.invariance",
    "filter_health": "zfwidgets.analysis.filters",
    "layer_aliasing": "zfwidgets.analysis.filters",
    "correspondence": "zfwidgets.analysis.correspondence",
    "feature_evolution": "zfwidgets.analysis.evolution",
    "SnapshotSaver": "zfwidgets.analysis.evolution",
    "lesion": "zfwidgets.analysis.lesion",
    "lesion_sweep": "zfwidgets.analysis.lesion",
    "ablation_table": "zfwidgets.analysis.lesion",
    "layer_probes": "zfwidgets.analysis.probes",
    "feature_generalisation": "zfwidgets.analysis.probes",
    # what a projection can and cannot tell (Adebayo et al. 2018; Mahendran & Vedaldi 2016)
    "randomize": "zfwidgets.analysis.sanity",
    "sanity_check": "zfwidgets.analysis.sanity",
    "data_randomization": "zfwidgets.analysis.sanity",
    "selectivity": "zfwidgets.analysis.sanity",
    # the data-set miner and its gallery file
    "mine": "zfwidgets.mine.miner",
    "Gallery": "zfwidgets.mine.gallery",
    # widgets
    "Explorer": "zfwidgets.widgets.explorer",
    "OcclusionPanel": "zfwidgets.widgets.occlusion",
    "TopGallery": "zfwidgets.widgets.topk",
    "EvolutionPanel": "zfwidgets.widgets.evolution",
    "InvariancePanel": "zfwidgets.widgets.invariance",
    "LesionPanel": "zfwidgets.widgets.lesion",
    "FilterPanel": "zfwidgets.widgets.filters",
    "CorrespondencePanel": "zfwidgets.widgets.correspondence",
    "ProbePanel": "zfwidgets.widgets.probes",
    "SanityPanel": "zfwidgets.widgets.sanity",
}

__all__ = ["Lens", "Forward", "SegmentationScores", "Projection", "project", "deconvnet_steps", "render", "load", "samples",
           "available", "model_card", "snapshot_epochs", *sorted(_LAZY)]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "plot":
        return importlib.import_module("zfwidgets.plot")
    raise AttributeError(f"module 'zfwidgets' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
