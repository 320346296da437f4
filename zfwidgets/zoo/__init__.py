"""The bundled models, their snapshots, and the sample images: everything tutorials need, offline.

Example:
    >>> lens = zfwidgets.load("zfnet-fashion")            # trained weights, eval mode, transform, classes
    >>> early = zfwidgets.load("zfnet-fashion", epoch=1)  # a training snapshot
    >>> s = zfwidgets.samples()[0]; s.image, s.label, lens.class_name(s.label)
    (<PIL.Image.Image image mode=L size=28x28 at 0x...>, 0, 'T-shirt/top')
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.inputs import image_of, label_of
from .data import FASHION_CLASSES, FASHION_MEAN, FASHION_STD
from .models import ARCHITECTURES, build

__all__ = ["load", "samples", "model_card", "available", "snapshot_epochs", "Sample", "load_weights",
           "image_and_label"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SAMPLES_FILE = Path(__file__).resolve().parent / "samples" / "fashion_samples.npz"


def available() -> list:
    """Names accepted by :func:`load`.

    Example:
        >>> zfwidgets.available()
        ['zfnet-fashion', 'allconv-fashion', 'zfnet-fashion-coarse', 'zfnet-fashion-half', 'zfnet-fashion-randomlabels']
    """
    return list(ARCHITECTURES)


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown bundled model {name!r}; available: {available()}")


def model_card(name: str) -> dict:
    """The model card written by the training script (seed, epochs, per-epoch accuracy, commit).

    Example:
        >>> card = zfwidgets.model_card("zfnet-fashion")
        >>> card["name"], card["seed"], card["test_accuracy"]
        ('zfnet-fashion', 0, 0.932)
    """
    _check_name(name)
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the package was installed without its weights")
    return json.loads(path.read_text())


def snapshot_epochs(name: str) -> list:
    """Epochs for which a snapshot ships (the last one is the final model).

    Example:
        >>> zfwidgets.snapshot_epochs("zfnet-fashion")
        [1, 2, 4, 8, 17]
    """
    _check_name(name)
    found = sorted(int(m.group(1)) for p in WEIGHTS_DIR.glob(f"{name}.epoch*.pt")
                   if (m := re.fullmatch(re.escape(name) + r"\.epoch(\d+)\.pt", p.name)))
    return found + [model_card(name)["epochs"]]


def load_weights(path) -> dict:
    """A state dict from ``path`` with ``torch.load(weights_only=True)``: a file that holds code is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise ValueError(f"refused to load {Path(path).name}: not a plain weights file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{Path(path).name} does not hold a state dict of tensors")
    return {k: v.float() for k, v in state.items()}


def load(name: str = "zfnet-fashion", epoch: int | None = None):
    """A ready :class:`~zfwidgets.Lens` on a bundled model (eval mode, transform, Fashion-MNIST classes).

    ``epoch=k`` gives the training snapshot after epoch k (see :func:`snapshot_epochs`).

    Example:
        >>> lens = zfwidgets.load("zfnet-fashion")
        >>> lens.input_size, lens.layers[:3]
        ((1, 28, 28), ['conv1', 'conv2', 'conv3'])
        >>> zfwidgets.load("zfnet-fashion", epoch=1).epoch
        1
    """
    from ..lens import DefaultTransform, Lens
    _check_name(name)
    card = model_card(name)
    if epoch is None or epoch == card["epochs"]:
        path = WEIGHTS_DIR / f"{name}.pt"
    else:
        epochs = snapshot_epochs(name)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch not in epochs:
            raise ValueError(f"no snapshot of {name} at epoch {epoch!r}; available epochs: {epochs}")
        path = WEIGHTS_DIR / f"{name}.epoch{epoch}.pt"
    model = build(name)
    model.load_state_dict(load_weights(path))
    model.eval()
    transform = DefaultTransform((28, 28), [FASHION_MEAN], [FASHION_STD])
    classes = card.get("class_names", FASHION_CLASSES)   # zfnet-fashion-half: its five classes, in output order
    lens = Lens(model, transform=transform, class_names=list(classes), input_size=(1, 28, 28),
                mean=[FASHION_MEAN], std=[FASHION_STD], name=name if epoch is None else f"{name}@{epoch}")
    lens.epoch = card["epochs"] if epoch is None else epoch
    return lens


@dataclass(frozen=True)
class Sample:
    """One shipped Fashion-MNIST test image: ``image`` (PIL, 28x28 'L'), ``label``, ``class_name``, ``index``
    (its position in the 10,000-image test set)."""
    image: Image.Image
    label: int
    class_name: str
    index: int

    def _repr_png_(self):
        import io
        buf = io.BytesIO()
        self.image.resize((112, 112), Image.NEAREST).save(buf, format="PNG")
        return buf.getvalue()


def image_and_label(item) -> tuple:
    """``(image, label or None)`` of one item: a :class:`Sample` (or anything with ``.image`` and ``.label``),
    an ``(image, label, ...)`` record, an ``{"image", "label"}`` dict, or a bare image (PIL, uint8 array,
    tensor), as every reader takes it (:func:`zfwidgets.core.inputs.image_of`).

    Example:
        >>> image, label = image_and_label(zfwidgets.samples()[0]); label
        0
    """
    return image_of(item), label_of(item)


@lru_cache(maxsize=1)
def _samples_arrays():
    with np.load(SAMPLES_FILE) as z:
        return z["images"].copy(), z["labels"].copy(), z["indices"].copy()


def samples(label: int | None = None) -> list:
    """The bundled sample images: the first 4 test images of each Fashion-MNIST class (40 in all).

    ``label=k`` keeps one class. Fashion-MNIST is © Zalando SE, MIT licence.

    Example:
        >>> s = zfwidgets.samples()[36]
        >>> s.label, s.class_name, s.image.size
        (9, 'Ankle boot', (28, 28))
        >>> len(zfwidgets.samples(label=9))
        4
    """
    images, labels, indices = _samples_arrays()
    out = [Sample(Image.fromarray(im), int(l), FASHION_CLASSES[int(l)], int(i))
           for im, l, i in zip(images, labels, indices)]
    if label is not None:
        if not (isinstance(label, int) and 0 <= label < 10):
            raise ValueError(f"label must be an int 0..9, got {label!r}")
        out = [s for s in out if s.label == label]
    return out
