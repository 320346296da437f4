"""The core: layer naming, capture of activations and switches, backward rules, projections.

Knows nothing of widgets or matplotlib.
"""
from .capture import Capture, ModelGuard, StopForward, pool_switches
from .graph import Graph, Node, Window
from .layers import LayerInfo, layer_table, resolve_layer, sequential_modules
from .project import (Projection, deconvnet_steps, not_active_image, project, render, select_activation,
                      unit_seed)
from .rules import RULES, Deconvnet, Gradient, GuidedBackprop, RectifierSwap, RuleReLU, RuleState

__all__ = ["Capture", "ModelGuard", "StopForward", "pool_switches", "Graph", "Node", "Window", "LayerInfo",
           "layer_table",
           "resolve_layer", "sequential_modules", "Projection", "deconvnet_steps", "project", "render",
           "select_activation", "unit_seed", "not_active_image", "RULES", "Deconvnet", "Gradient", "GuidedBackprop",
           "RectifierSwap",
           "RuleReLU", "RuleState"]
