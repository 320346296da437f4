"""Exact incremental inference: occluded forwards of one image that recompute only what each occluder changes.

- :class:`GraphOcclusion` (:mod:`zfwidgets.inference.graph`): any CNN ``torch.fx`` traces (ResNets, DenseNets,
  GoogLeNet, MobileNets, and the chains: ``nn.Sequential``, AlexNet / VGG), on the model's
  :class:`~zfwidgets.core.graph.Graph`; it alone decides, with ``mode="auto"``, whether a batch runs through
  its plan or as plain batched forwards (counted, then timed on this machine);
- :func:`occlusion_engine`: the lens's engine for an image (cached), which :func:`zfwidgets.occlusion` and the
  occlusion panel use; its :meth:`~GraphOcclusion.estimate` says what a batch costs against plain batched
  forwards, and :meth:`~GraphOcclusion.layer_shapes` gives the layers' output shapes;
- :mod:`zfwidgets.inference.boxes`: occluder boxes clipped to the image, and the occluded images.

Example:
    >>> engine = occlusion_engine(lens, image)
    >>> engine.estimate([(0, 0, 8, 8)]).pays        # the bundled 28x28 net: plain forwards
    False
    >>> logits, acts = occluded_run(lens, image, [(0, 0, 8, 8)], "mean", ["conv5"])
    >>> logits.shape, acts["conv5"].shape
    (torch.Size([1, 10]), torch.Size([1, 64, 7, 7]))
"""
from __future__ import annotations

from ..core.inputs import as_input
from .boxes import clip_boxes, occluded_batch
from .graph import DEFAULT_THRESHOLD, Estimate, GraphOcclusion, OccludedOutputs, check_tau

__all__ = ["GraphOcclusion", "Estimate", "OccludedOutputs", "occlusion_engine", "occluded_run", "occluded_batch",
           "clip_boxes", "check_tau"]


def occlusion_engine(lens, image, *, threshold: float = DEFAULT_THRESHOLD) -> GraphOcclusion:
    """The lens's :class:`GraphOcclusion` for ``image``: reused while the image (and the weights) stay the
    same, rebuilt for a new image (keeping what the last one measured: the choice between the plan and plain
    forwards depends on the model and the input size, not on the image). Cheap to call on every mouse move.

    >>> occlusion_engine(lens, image) is occlusion_engine(lens, image)
    True
    """
    x = as_input(lens, image).detach()
    engine = lens.caches.get("occlusion engine")
    if engine is None or engine.threshold != threshold or not engine.same_image(x):
        old = engine
        engine = GraphOcclusion(lens, x, threshold=threshold)
        if old is not None and old.threshold == threshold:
            engine._measured = old._measured
        lens.caches["occlusion engine"] = engine
    return engine


def occluded_run(lens, x, boxes, fill, layers=(), *, logits: bool = True, total: int | None = None,
                 tau: float | None = None):
    """Drop-in for ``lens.run(<x occluded by each box>, layers, logits=logits)``, on the lens's engine, which
    runs its plan or plain batched forwards, whichever is faster (``mode="auto"``).

    ``x``: the unoccluded input (1 x C x H x W); ``boxes``: B x 4 ``(y0, x0, y1, x1)``; ``fill``: C values (or
    anything :func:`zfwidgets.occlusion` accepts); ``total``: the boxes of the job this batch starts (the
    engine weighs its plan's first-use costs against them); ``tau``: the projective-field threshold (an
    approximation, :meth:`GraphOcclusion.run`; the engine's ``last_exact`` then says which boxes came out exact).
    Returns ``(logits B x K or None, {layer name: B x ...})``.

    >>> logits, acts = occluded_run(lens, image, [(0, 0, 8, 8), (10, 10, 18, 18)], lens.fill_value, ["conv5"])
    >>> logits.shape
    torch.Size([2, 10])
    """
    return occlusion_engine(lens, x).run(boxes, layers, fill=fill, logits=logits, total=total, tau=tau)
