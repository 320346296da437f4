"""Moved to :mod:`zfwidgets.core.inputs`; re-exported here only until every user imports it from the core."""
from ..core.inputs import (DEFAULT_BATCH_SIZE, Inputs, as_input, as_labels, gather, image_of,  # noqa: F401
                           is_single_image, label_of)
