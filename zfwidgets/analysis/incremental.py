"""Moved to :mod:`zfwidgets.inference` (incremental inference is not analysis); kept as a re-export."""
from ..inference import occluded_run, occlusion_engine  # noqa: F401
from ..inference.chain import *  # noqa: F401,F403
from ..inference.chain import (_ONEDNN_ROWS, _clip_boxes, _linear, DEFAULT_THRESHOLD,  # noqa: F401
                               IncrementalOcclusion, OccludedOutputs, occluded_batch)
