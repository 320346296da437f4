"""Helpers the analysis functions share: argument checks, default layers, the occluder fill, and
turning whatever collection of images a user passes into a stream of preprocessed batches.

Everything here is private to ``zfwidgets.analysis``; other analysis modules may import it.

Example:
    >>> for start, x in image_batches(lens, zfwidgets.samples(), batch_size=16):
    ...     x.shape                      # 16 x C x H x W model input; start = index of x[0]
    torch.Size([16, 1, 28, 28])
    torch.Size([16, 1, 28, 28])
    torch.Size([8, 1, 28, 28])
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from pathlib import PurePath

import numpy as np
import torch
from PIL import Image

__all__ = ["check_lens", "check_int", "check_flag", "image_of", "as_input", "image_batches", "count_images",
           "default_conv_layer", "first_conv_layer", "last_hidden_layer", "fill_tensor", "layer_names"]


def check_lens(lens) -> None:
    """``TypeError`` unless ``lens`` is a :class:`zfwidgets.Lens`."""
    from ..lens import Lens
    if not isinstance(lens, Lens):
        raise TypeError(f"expected a zfwidgets.Lens as the first argument, got {type(lens).__name__}; "
                        "wrap a model with zfwidgets.Lens(model, input_size=...)")


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as an int; ``TypeError`` for a non-integer (bools too), ``ValueError`` below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_flag(name: str, value) -> None:
    if not (isinstance(value, bool) or callable(value)):
        raise TypeError(f"{name} must be True, False or a callable f(done, total), got {type(value).__name__}")


def _is_label(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (Integral, str)):
        return True
    return isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 0


def _is_image(v) -> bool:
    return isinstance(v, (Image.Image, np.ndarray, torch.Tensor, str, PurePath, bytes, bytearray)) or hasattr(v, "image")


def image_of(item):
    """The image in one data set item: a bare image, a ``Sample`` (``.image``) or an ``(image, label)`` pair."""
    if hasattr(item, "image") and not isinstance(item, (torch.Tensor, np.ndarray, Image.Image)):
        return item.image
    if isinstance(item, (tuple, list)) and len(item) == 2 and _is_image(item[0]) and _is_label(item[1]):
        return image_of(item[0])
    if isinstance(item, dict) and "image" in item:
        return item["image"]
    return item


def as_input(lens, image) -> torch.Tensor:
    """One image of any accepted kind as model input 1 x C x H x W (float tensors are moved to the model's device)."""
    image = image_of(image)
    if isinstance(image, torch.Tensor) and torch.is_floating_point(image):
        image = image.to(lens.device)
    return lens.to_input(image)


def count_images(images) -> int | None:
    """How many images ``images`` holds, when that is known without iterating (else ``None``)."""
    from torch.utils.data import DataLoader
    if isinstance(images, torch.Tensor):
        return int(images.shape[0]) if images.dim() == 4 else 1
    if isinstance(images, DataLoader):
        try:
            return len(images.dataset)
        except TypeError:
            return None
    try:
        return len(images)
    except TypeError:
        return None


def _batch_tensor(batch):
    """The image tensor of one DataLoader batch: the batch itself, its first element, or ``batch['image']``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict) and "image" in batch:
        return batch["image"]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError("a DataLoader must yield image tensors N x C x H x W, (images, labels) pairs or dicts with "
                    f"an 'image' entry; got {type(batch).__name__}")


def image_batches(lens, images, batch_size: int = 64):
    """Yield ``(start, x)``: preprocessed batches (``x``: n x C x H x W on the model's device) and the index
    of their first image, in data set order.

    ``images`` may be an N x C x H x W float tensor (model input), a ``DataLoader`` (its batches are used
    as they come), a ``Dataset`` (read by index), or any iterable of images (PIL images, uint8 arrays,
    float tensors C x H x W, ``zfwidgets.samples()`` items, ``(image, label)`` pairs).
    """
    from torch.utils.data import DataLoader, Dataset, IterableDataset
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if isinstance(images, (Image.Image, np.ndarray, str, PurePath, bytes, bytearray)) or (
            isinstance(images, torch.Tensor) and images.dim() != 4):
        raise TypeError(f"expected a collection of images (list, Dataset, DataLoader or an N x C x H x W "
                        f"tensor), got a single image ({type(images).__name__}); wrap it in a list")
    if isinstance(images, torch.Tensor):
        if not torch.is_floating_point(images):
            raise TypeError(f"an image tensor must be float model input N x C x H x W, got dtype {images.dtype}")
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start:start + batch_size].to(lens.device)
            yield start, lens.to_batch(chunk)
        return
    if isinstance(images, DataLoader):
        start = 0
        for batch in images:
            x = _batch_tensor(batch)
            if x.dim() == 3:
                x = x.unsqueeze(1)
            if not torch.is_floating_point(x):
                raise TypeError(f"the DataLoader yielded a {x.dtype} tensor; expected float model input "
                                "(apply the lens's transform in the Dataset)")
            x = lens.to_batch(x.to(lens.device))
            yield start, x
            start += x.shape[0]
        return
    if isinstance(images, Dataset) and not isinstance(images, IterableDataset):
        try:
            n = len(images)
        except TypeError:
            raise TypeError("a map-style Dataset must define __len__") from None
        items = (images[i] for i in range(n))
    elif isinstance(images, Iterable):
        items = iter(images)
    else:
        raise TypeError(f"images must be an iterable of images, a Dataset, a DataLoader or an N x C x H x W "
                        f"tensor; got {type(images).__name__}")
    start, pending = 0, []
    for item in items:
        pending.append(as_input(lens, item))
        if len(pending) == batch_size:
            yield start, torch.cat(pending)
            start += len(pending)
            pending = []
    if pending:
        yield start, torch.cat(pending)


def default_conv_layer(lens) -> str:
    """The name of the lens's last convolution (ZF's 'top conv layer')."""
    return [i.name for i in lens.table if i.kind == "conv"][-1]


def first_conv_layer(lens) -> str:
    """The name of the lens's lowest convolution (ZF's layer 1)."""
    return [i.name for i in lens.table if i.kind == "conv"][0]


def last_hidden_layer(lens) -> str:
    """The layer before the last fully connected one (ZF's layer 7); the last conv layer if there is no fc."""
    names = lens.layers
    fcs = [k for k, i in enumerate(lens.table) if i.kind == "fc"]
    if fcs and fcs[-1] > 0:
        return names[fcs[-1] - 1]
    return default_conv_layer(lens)


def layer_names(lens, layers) -> list:
    """Resolved friendly names of ``layers`` (one layer or a sequence of them)."""
    if isinstance(layers, (str, torch.nn.Module)):
        layers = [layers]
    if not isinstance(layers, Sequence) or not layers:
        raise TypeError(f"layers must be a layer name, a module, or a non-empty list of them; got {layers!r}")
    return [lens.resolve(l)[0] for l in layers]


def fill_tensor(lens, fill) -> torch.Tensor:
    """The occluder fill as C values in model-input space: ``"mean"`` (the lens's :attr:`fill_value`, the data
    set's mean pixel), a number, or one number per channel."""
    C = lens.channels
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f"fill must be 'mean', a number or {C} per-channel numbers; got {fill!r}")
        value = lens.fill_value.detach().float()
    elif isinstance(fill, bool):
        raise TypeError("fill must be 'mean', a number or a per-channel sequence, got a bool")
    elif isinstance(fill, Real):
        value = torch.full((C,), float(fill))
    elif isinstance(fill, (Sequence, np.ndarray, torch.Tensor)):
        try:
            value = torch.as_tensor(np.asarray(fill, dtype=np.float64) if not isinstance(fill, torch.Tensor)
                                    else fill.detach().cpu(), dtype=torch.float32).flatten()
        except (TypeError, ValueError):
            raise TypeError(f"fill must be 'mean', a number or {C} per-channel numbers; got {fill!r}") from None
        if value.numel() == 1:
            value = value.expand(C).clone()
        if value.numel() != C:
            raise ValueError(f"fill has {value.numel()} values but the model takes {C}-channel input")
    else:
        raise TypeError(f"fill must be 'mean', a number or {C} per-channel numbers; got {type(fill).__name__}")
    if not torch.isfinite(value).all():
        raise ValueError(f"fill must be finite, got {value.tolist()}")
    return value.to(lens.device)
