"""THE input layer: whatever a user passes (an image, a data-set item, a collection of them) becomes model input,
with the labels and boxes that come with it. The lens, every analysis, the miner, the occlusion engine, the zoo
and the panels read their inputs here, so one item means one image everywhere.

The lens is duck-typed (``transform``, ``channels``, ``input_size``, ``device``, ``fill_value``, ``dtype``): the
core imports nothing above it. Model input is made in the model's dtype (``lens.dtype``: a float64 or bfloat16
model gets float64 or bfloat16 input from the same image). Decoding files and bytes, and checking a tensor, live
in :mod:`.images`.

One image (:func:`as_input`, what the analyses and panels read): a PIL image, a uint8 array H x W [x C], a
uint8 tensor (H x W, C x H x W or H x W x C), a file path, an image file's bytes, or a float tensor C x H x W /
1 x C x H x W (already preprocessed model input); or any data-set item holding one (:func:`image_of`). Pixels
go through the lens's own preprocessing; float tensors are taken as model input. :func:`to_input` (the lens's
``to_input``) is the strict form: one image, float tensors already on the model's device; :func:`cpu_input`
is the miner's unchecked form for its loader workers.

Collections (:func:`gather`):

- a list (or any iterable) of images or data-set items;
- a uint8 array (or tensor) N x H x W or N x H x W x C of pixels;
- a float tensor N x C x H x W of preprocessed model input;
- a map-style ``Dataset`` whose items are any of the single items (``TensorDataset`` included);
- a ``DataLoader`` yielding image batches, ``(batch, labels)`` pairs or dicts with ``"image"``/``"label"``.

Labels: an explicit ``labels=`` wins; otherwise they come from the data (samples, pairs, dicts, a loader's
second element) when every item has one. A length mismatch is a ``ValueError`` that names both lengths.

Example:
    >>> data = gather(lens, zfwidgets.samples())
    >>> len(data), data.labels[:4].tolist()
    (40, [0, 0, 0, 0])
    >>> [tuple(x.shape) for _, x in data.batches(16)]
    [(16, 1, 28, 28), (16, 1, 28, 28), (8, 1, 28, 28)]
    >>> s = zfwidgets.samples()[0]
    >>> image_of((s.image, 3, "note")) is image_of({"img": s.image}) is image_of(s) is s.image
    True
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from pathlib import PurePath

import numpy as np
import torch
from PIL import Image

from .._progress import progress as _progress
from .images import as_pil, check_input_tensor

__all__ = ["DEFAULT_BATCH_SIZE", "Inputs", "gather", "as_labels", "image_of", "label_of", "as_input", "to_input",
           "to_batch", "cpu_input", "is_single_image", "as_box", "fill_tensor"]

#: images per forward, the same default for every analysis
DEFAULT_BATCH_SIZE = 64

_EXPECTED = ("a list or other iterable of images (PIL, uint8 arrays, float tensors C x H x W, paths, samples, (image, label) "
             "pairs), a uint8 array N x H x W [x C], a float tensor N x C x H x W of model input, a Dataset "
             "or a DataLoader")

#: the keys under which a dict item holds its image
IMAGE_KEYS = ("image", "img")


# ----- data-set items -------------------------------------------------------------------------------
def _is_label(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, Integral):
        return True
    return isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 0 and not (
        torch.is_floating_point(v) if isinstance(v, torch.Tensor) else np.issubdtype(v.dtype, np.floating))


def _is_sample(item) -> bool:
    return hasattr(item, "image") and not isinstance(item, (torch.Tensor, np.ndarray, Image.Image))


def _is_image(v) -> bool:
    return isinstance(v, (Image.Image, np.ndarray, torch.Tensor, str, PurePath, bytes, bytearray, memoryview)) \
        or _is_sample(v)


def _is_record(item) -> bool:
    """A tuple or list whose first element is an image: ``(image, label)``, ``(image, label, ...)``, ``(x,)``."""
    return isinstance(item, (tuple, list)) and len(item) >= 1 and _is_image(item[0])


def _dict_key(item):
    return next((k for k in IMAGE_KEYS if k in item), None) if isinstance(item, dict) else None


def image_of(item):
    """THE image in one data-set item, for every reader (the analyses, the miner, the zoo, the panels):

    - a sample (anything with an ``.image``, such as ``zfwidgets.samples()`` items): its ``.image``;
    - a tuple or list whose first element is an image, the ``Dataset`` convention ``(image, label)``,
      ``(image, label, extra...)`` or ``TensorDataset``'s ``(x,)``: that first element (itself read as an item);
    - a dict with an ``"image"`` (or ``"img"``) entry: that entry;
    - anything else is the image itself.
    """
    if _is_sample(item):
        return item.image
    if _is_record(item):
        return image_of(item[0])
    key = _dict_key(item)
    return item if key is None else item[key]


def label_of(item):
    """The label one item carries, or ``None``: a sample's ``.label``, a record's second element when it is an
    integer, a dict's ``"label"``."""
    if _is_sample(item):
        label = getattr(item, "label", None)
    elif _is_record(item):
        label = item[1] if len(item) >= 2 and _is_label(item[1]) else None
    elif _dict_key(item) is not None:
        label = item.get("label")
    else:
        return None
    return None if label is None else int(label)


def is_single_image(images) -> bool:
    """True when ``images`` is one image rather than a collection of them."""
    if isinstance(images, (Image.Image, str, PurePath, bytes, bytearray)):
        return True
    if isinstance(images, np.ndarray):  # H x W, or H x W x 3/4 (a stack N x H x W of width 3 or 4 is no image)
        return images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (3, 4))
    if isinstance(images, torch.Tensor):
        return images.dim() <= 2 or (images.dim() == 3 and torch.is_floating_point(images))
    return _is_sample(images)


# ----- one image ------------------------------------------------------------------------------------
def _pixels(t: torch.Tensor) -> np.ndarray:
    """A uint8 image tensor (H x W, C x H x W or H x W x C) as a uint8 array H x W [x C]."""
    a = t.detach().cpu().numpy()
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        a = np.moveaxis(a, 0, 2)
    return a


def _dtype(lens) -> torch.dtype:
    return getattr(lens, "dtype", None) or torch.float32


def _in_dtype(lens, x: torch.Tensor) -> torch.Tensor:
    """A float tensor in the model's dtype (other dtypes are left for the check to refuse)."""
    return x.to(_dtype(lens)) if torch.is_floating_point(x) else x


def _transformed(lens, image) -> torch.Tensor:
    """Pixels (PIL, uint8 array or tensor, path, bytes) through the lens's transform: C x H x W in the model's
    dtype, unchecked."""
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        image = _pixels(image)
    x = lens.transform(as_pil(image, lens.channels))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the lens's transform returned {type(x).__name__}, expected a tensor CxHxW")
    return _in_dtype(lens, x)


def to_input(lens, image) -> torch.Tensor:
    """One image as model input 1 x C x H x W, checked (float, finite, the model's channels, size and device):
    pixels (PIL, uint8 array, path, bytes) go through the lens's transform, a tensor is taken as model input.
    :meth:`Lens.to_input <zfwidgets.Lens.to_input>`; :func:`as_input` is the lenient form the analyses read."""
    size = None if lens.input_size is None else lens.input_size[1:]
    if isinstance(image, torch.Tensor):
        return _in_dtype(lens, check_input_tensor(image, lens.channels, size, lens.device))
    return check_input_tensor(_transformed(lens, image).to(lens.device), lens.channels, size, lens.device)


def as_input(lens, image) -> torch.Tensor:
    """:func:`to_input` of one image or of the image in one data-set item (:func:`image_of`), also taking uint8
    tensors as pixels and moving float tensors to the model's device."""
    image = image_of(image)
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:
            image = _pixels(image)
        elif torch.is_floating_point(image):
            image = image.to(lens.device)
    return to_input(lens, image)


def cpu_input(lens, image) -> torch.Tensor:
    """:func:`as_input` as the miner's loader workers read it: C x H x W on the CPU and not checked (a float
    tensor is taken as it is; the miner reports a NaN map itself, naming the image)."""
    image = image_of(image)
    if isinstance(image, torch.Tensor) and torch.is_floating_point(image):
        x = image.detach()
        return _in_dtype(lens, (x[0] if x.dim() == 4 and x.shape[0] == 1 else x).cpu())
    return _transformed(lens, image).detach().cpu()


def to_batch(lens, images) -> torch.Tensor:
    """Several images (a list, or an N x C x H x W tensor of model input) as one batch, each checked as
    :func:`to_input` checks it (:meth:`Lens.to_batch <zfwidgets.Lens.to_batch>`)."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        if not images.shape[0]:
            return images
        to_input(lens, images[:1])            # dtype, channels, size, device: one image speaks for all
        finite = torch.isfinite(images).flatten(1).all(1)
        if not bool(finite.all()):
            raise ValueError(f"image {int((~finite).nonzero()[0])} of the batch contains NaN or infinite values")
        return images.to(_dtype(lens), copy=True)
    xs = [to_input(lens, im) for im in images]
    if not xs:
        raise ValueError("no images given")
    return torch.cat(xs)


# ----- labels ---------------------------------------------------------------------------------------
def as_labels(labels, n: int, *, what: str = "images") -> torch.Tensor:
    """Labels as an int64 tensor of length ``n`` (``TypeError`` for non-integers, ``ValueError`` naming both
    lengths when they differ)."""
    if isinstance(labels, torch.Tensor):
        t = labels.detach().cpu()
    else:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, (Iterable, np.ndarray)):
            raise TypeError(f"labels must be a sequence of class indices, got {type(labels).__name__}")
        try:
            arr = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels)
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"labels must be a sequence of ints, got {type(labels).__name__}") from e
        if arr.dtype == object or arr.dtype.kind in "USb":
            raise TypeError(f"labels must be integers, got {arr.dtype} values")
        t = torch.from_numpy(arr.copy())
    if t.dtype == torch.bool or torch.is_floating_point(t) or torch.is_complex(t):
        raise TypeError(f"labels must be integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"labels must be one int per image (a 1-D sequence), got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        where = "" if what == "images" else f"{what}: "
        raise ValueError(f"{where}got {n} images but {t.shape[0]} labels")
    if n and int(t.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(t.min())}")
    return t.long()


# ----- boxes and fills ------------------------------------------------------------------------------
def as_box(box, H: int, W: int, *, clip: bool = False, where: str = "box") -> tuple:
    """``(y0, x0, y1, x1)`` ints of a box (half-open) on an H x W image: a tuple, list, array or tensor of four
    ints, or anything with ``as_tuple()`` (a :class:`~zfwidgets.analysis.receptive.Box`).

    ``clip=True`` cuts the box to the image (``ValueError`` when nothing is left); otherwise a box that is empty
    or not inside the image is a ``ValueError``. ``where`` starts the messages. Non-integer coordinates are a
    ``TypeError``.

    Example:
        >>> as_box((-2, 3, 5, 40), 28, 28, clip=True)
        (0, 3, 5, 28)
    """
    if hasattr(box, "as_tuple"):
        box = box.as_tuple()
    if isinstance(box, (torch.Tensor, np.ndarray)):
        box = box.tolist()
    if not isinstance(box, (tuple, list)) or len(box) != 4:
        raise TypeError(f"{where}: a box must be (y0, x0, y1, x1), a tuple of 4 ints; got {box!r}")
    if not all(isinstance(v, Integral) and not isinstance(v, (bool, np.bool_)) for v in box):
        raise TypeError(f"{where}: box coordinates must be ints (y0, x0, y1, x1), got {tuple(box)!r}")
    t = tuple(int(v) for v in box)
    y0, x0, y1, x1 = t
    if clip:
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"{where}: box {t} is empty: it needs y0 < y1 and x0 < x1 (half-open)")
        y0, y1, x0, x1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"{where}: box {t} lies outside the {H}x{W} image")
        return y0, x0, y1, x1
    if not (0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W):
        raise ValueError(f"{where}: box {t} is empty or outside the {H}x{W} input; expected "
                         f"0 <= y0 < y1 <= {H} and 0 <= x0 < x1 <= {W}")
    return t


def fill_tensor(lens, fill) -> torch.Tensor:
    """The occluder fill as C values in model-input space, in the model's dtype: ``"mean"`` (the lens's
    :attr:`fill_value`, the data set's mean pixel), a number, or one number per channel."""
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
    return value.to(lens.device, _dtype(lens))


# ----- collections ----------------------------------------------------------------------------------
def _loader_parts(batch):
    """``(images, labels or None)`` of one DataLoader batch."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    key = _dict_key(batch)
    if key is not None:
        return batch[key], batch.get("label")
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        labels = batch[1] if len(batch) >= 2 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], labels
    raise TypeError("a DataLoader must yield image tensors N x C x H x W, (images, labels) pairs or dicts with "
                    f"an 'image' entry; got {type(batch).__name__}")


class Inputs:
    """A collection of images ready to be read as model-input batches, in data set order (see :func:`gather`).

    ``len(inputs)`` is the number of images; :meth:`batches` yields ``(start, x)`` (x: n x C x H x W on the
    model's device, start: the index of its first image) and can be read again; :attr:`labels` are the
    labels (given or carried by the data), ``None`` where there are none; :meth:`tensor` is every image as
    one batch.
    """

    def __init__(self, lens, kind: str, source, n: int, labels: torch.Tensor | None, carried=None):
        self.lens, self.kind, self.source, self.n = lens, kind, source, n
        self._labels = labels
        self._carried = carried      # reads the labels the data carries, on first use (None: none)
        self._tensor = None

    def __len__(self) -> int:
        return self.n

    def __repr__(self):
        return f"Inputs({self.n} images from a {self.kind}, labels={'yes' if self.labels is not None else 'no'})"

    @property
    def labels(self) -> torch.Tensor | None:
        if self._labels is None and self._carried is not None:
            found, self._carried = self._carried(), None
            if found is not None:
                self._labels = as_labels(found, self.n)
        return self._labels

    def require_labels(self, what: str = "this analysis") -> torch.Tensor:
        """The labels, or a ``ValueError`` saying how to give them."""
        if self.labels is None:
            raise ValueError(f"{what} needs labels: pass labels=[...] (one class index per image), or data that "
                             "carries them (samples, (image, label) pairs, a Dataset or DataLoader of pairs)")
        return self._labels

    def batches(self, batch_size: int = DEFAULT_BATCH_SIZE, *, progress=False, desc: str = "images"):
        """Yield ``(start, x)``: preprocessed batches on the model's device, in data set order."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        batch_size = int(batch_size)
        total = len(self.source) if self.kind == "DataLoader" else -(-self.n // batch_size)
        return _progress(self._batches(batch_size), total=total, desc=desc, enabled=progress)

    def _batches(self, batch_size):
        lens = self.lens
        if self._tensor is not None or self.kind == "tensor":
            x = self._tensor if self._tensor is not None else self.source
            for start in range(0, self.n, batch_size):
                chunk = x[start:start + batch_size]
                yield start, chunk if self._tensor is not None else to_batch(lens, chunk.to(lens.device))
            return
        if self.kind == "DataLoader":
            start = 0
            for batch in self.source:
                x, _ = _loader_parts(batch)
                yield start, self._loader_batch(x)
                start += x.shape[0]
            return
        items = self.source
        for start in range(0, self.n, batch_size):
            if self.kind == "Dataset":
                chunk = [items[i] for i in range(start, min(start + batch_size, self.n))]
            else:
                chunk = items[start:start + batch_size]
            yield start, torch.cat([as_input(lens, item) for item in chunk])

    def _loader_batch(self, x: torch.Tensor) -> torch.Tensor:
        lens = self.lens
        if x.dtype == torch.uint8:
            return torch.cat([as_input(lens, im) for im in x])
        if not torch.is_floating_point(x):
            raise TypeError(f"the DataLoader yielded a {x.dtype} tensor; expected float model input N x C x H x W "
                            "or uint8 pixels")
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return to_batch(lens, x.to(lens.device))

    def tensor(self) -> torch.Tensor:
        """Every image as one N x C x H x W batch of model input (computed once)."""
        if self._tensor is None:
            parts = [x for _, x in self._batches(DEFAULT_BATCH_SIZE)]
            self._tensor = torch.cat(parts) if parts else torch.empty(0)
        return self._tensor

    def subset(self, indices) -> "Inputs":
        """The images at ``indices`` (model input, in that order) with their labels."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        x = self.tensor()[idx.to(self.tensor().device)]
        y = None if self.labels is None else self.labels[idx]
        out = Inputs(self.lens, "tensor", x, int(idx.numel()), y)
        out._tensor = x
        return out


def gather(lens, images, labels=None, *, what: str = "images", min_images: int = 1) -> Inputs:
    """``images`` (any accepted collection, see the module docstring) as :class:`Inputs`.

    ``labels``: one class index per image; wins over the labels the data carries. Raises ``TypeError`` for
    what is not a collection of images (a single image: wrap it in a list), ``ValueError`` for an empty
    collection (fewer than ``min_images``), a shuffled ``DataLoader`` (its order changes from pass to
    pass) or labels of the wrong length.
    """
    from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler
    if images is None:
        raise TypeError(f"{what} must be given: {_EXPECTED}; got None")
    if is_single_image(images):
        raise TypeError(f"{what}: expected a collection of images, got a single image ({type(images).__name__}); "
                        "wrap it in a list")
    carried = None
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            images = images.cpu().numpy()
        elif not torch.is_floating_point(images):
            raise TypeError(f"{what}: a tensor of images must be float model input N x C x H x W or uint8 "
                            f"pixels, got dtype {images.dtype}")
        elif images.dim() != 4:
            raise ValueError(f"{what}: a float tensor of images must be N x C x H x W, got shape "
                             f"{tuple(images.shape)}")
        else:
            kind, source, n = "tensor", images, int(images.shape[0])
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"{what}: an array of images must be uint8 pixels N x H x W or N x H x W x C, got "
                            f"dtype {images.dtype}; pass preprocessed input as a float tensor N x C x H x W")
        if images.ndim not in (3, 4):
            raise ValueError(f"{what}: an array of images must be N x H x W or N x H x W x C, got shape "
                             f"{images.shape}")
        kind, source, n = "array", list(images), int(images.shape[0])
    elif isinstance(images, torch.Tensor):
        pass
    elif isinstance(images, DataLoader):
        sampler = getattr(images, "batch_sampler", None)
        sampler = getattr(sampler, "sampler", None) or getattr(images, "sampler", None)
        if isinstance(sampler, RandomSampler):
            raise ValueError(f"{what}: the DataLoader shuffles (shuffle=True), so its order changes on every "
                             "pass; give one with shuffle=False")
        kind, source = "DataLoader", images

        def carried():  # one pass over the loader: the labels its batches carry
            ys = [_loader_parts(batch)[1] for batch in images]
            if ys and all(y is not None for y in ys):
                return torch.cat([torch.as_tensor(y).reshape(-1) for y in ys])
            return None
        try:
            n = len(images.dataset)
        except TypeError:  # an iterable data set: count it (and keep its labels) in one pass
            n, ys = 0, []
            for batch in images:
                x, y = _loader_parts(batch)
                n += int(x.shape[0])
                ys.append(y)
            found = torch.cat([torch.as_tensor(y).reshape(-1) for y in ys]) if ys and all(
                y is not None for y in ys) else None
            carried = (lambda: found)
    elif isinstance(images, Dataset) and not isinstance(images, IterableDataset):
        try:
            n = len(images)
        except TypeError:
            raise TypeError(f"{what}: a map-style Dataset must define __len__") from None
        kind, source = "Dataset", images

        def carried():
            found = [label_of(images[i]) for i in range(n)]
            return found if found and all(v is not None for v in found) else None
    elif isinstance(images, dict) or not isinstance(images, Iterable):
        raise TypeError(f"{what}: expected {_EXPECTED}; got {type(images).__name__}")
    else:
        source = list(images)
        kind, n = "list", len(source)
        found = [label_of(item) for item in source]
        carried = (lambda: found) if n and all(v is not None for v in found) else None
    if n < min_images:
        raise ValueError(f"{what}: no images given (the collection is empty)" if n == 0 else
                         f"{what}: need at least {min_images} images, got {n}")
    y = None if labels is None else as_labels(labels, n, what=what)
    return Inputs(lens, kind, source, n, y, None if y is not None else carried)
