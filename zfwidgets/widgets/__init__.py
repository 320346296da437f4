"""Live panels (ipywidgets + ipycanvas, no custom JavaScript) over the plain API.

- :class:`~zfwidgets.widgets.explorer.Explorer`: image, layer and channel; all feature maps, the chosen one
  enlarged, projections (deconvnet / guided / gradient), predicted classes.
- :class:`~zfwidgets.widgets.occlusion.OcclusionPanel`: drag a grey square over the image; top-5 and feature
  maps follow; the full occlusion maps (ZF Fig. 7) on a button.
- :class:`~zfwidgets.widgets.topk.TopGallery`: top-9 projections and patches per feature map (Fig. 2).
- :class:`~zfwidgets.widgets.evolution.EvolutionPanel`: projections snapshot by snapshot (Fig. 4).
- :class:`~zfwidgets.widgets.invariance.InvariancePanel`: a transform slider with distances and p(true) (Fig. 5).
- :class:`~zfwidgets.widgets.lesion.LesionPanel`: click maps off; probabilities and held-out accuracy (Table 3).
- :class:`~zfwidgets.widgets.filters.FilterPanel`: two models' first-layer filters, dead/healthy, spectra (Fig. 6).
- :class:`~zfwidgets.widgets.correspondence.CorrespondencePanel`: drag a part's box on each image; Δ per
  layer against random masks (Fig. 8, Table 1).
- :class:`~zfwidgets.widgets.probes.ProbePanel`: probe accuracy per layer; a layer's confusion matrix and
  the explorer on it (Table 7).
- :class:`~zfwidgets.widgets.sanity.SanityPanel`: randomise the model from the top down to a layer; the three
  methods' projections, trained and randomised, with their similarities (Adebayo et al. 2018).

Every panel is an ``ipywidgets.VBox``: display it, read ``panel.state``, ``panel.close()`` when done. A failing
callback shows its error inside the panel (``.zf-error``) and the panel keeps working. The names are imported
lazily from ``zfwidgets`` (``zfwidgets.Explorer``...), so importing the package does not import ipywidgets.
"""
import importlib

_PANELS = {"Explorer": "explorer", "OcclusionPanel": "occlusion", "TopGallery": "topk",
           "EvolutionPanel": "evolution", "InvariancePanel": "invariance", "LesionPanel": "lesion",
           "FilterPanel": "filters", "CorrespondencePanel": "correspondence", "ProbePanel": "probes",
           "SanityPanel": "sanity"}

__all__ = sorted(_PANELS)


def __getattr__(name):
    if name in _PANELS:
        return getattr(importlib.import_module(f".{_PANELS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
