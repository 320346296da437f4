"""The data sets the miner reads: a folder of images, the bundled Fashion-MNIST splits, any map-style
``Dataset`` or a ``DataLoader`` over one. Every source is a map-style data set whose item ``i`` is
``(model input C x H x W, ok)``; image ``i`` has a stable id (its path, ``fashion-mnist:test/17``...).

An image that cannot be decoded gives ``ok = False`` and a zero tensor: the miner skips it, counts it and
lists it (or, with ``strict``, stops naming the file). Decoding runs in ``DataLoader`` workers.

Example:
    >>> src, options = open_data("fashion-mnist:test", lens)
    >>> len(src), src.ids(3)
    (10000, 'fashion-mnist:test/3')
    >>> x3, ok = src[3]; tuple(x3.shape), bool(ok)
    ((1, 28, 28), True)
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

from ..core.inputs import cpu_input

__all__ = ["IMAGE_EXTENSIONS", "ImageFiles", "FashionSplit", "Wrapped", "open_data"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class _Source(Dataset):
    """Base: ``len``, item ``i`` -> ``(x, ok)``, ``ids(i)``, ``describe()`` for the gallery's metadata."""
    spec = ""

    def ids(self, i: int) -> str:
        return f"{self.spec}/{i}"

    def describe(self) -> dict:
        return {"spec": self.spec, "images": len(self)}

    def name_of(self, i: int) -> str:
        return self.ids(i)


def _image_files(root: Path):
    """``(relative posix path, path)`` of every image file under ``root``, as strings: ``os.walk`` reads the file
    types from the directory entries (no ``stat`` per file, as ``Path.is_file`` would make), and no ``Path`` is
    made per file (a third of the listing's time)."""
    top = os.fspath(root)
    for folder, _, names in os.walk(top):
        rel = os.path.relpath(folder, top)
        prefix = "" if rel == os.curdir else rel.replace(os.sep, "/") + "/"
        for name in names:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                yield prefix + name, os.path.join(folder, name)


class ImageFiles(_Source):
    """Every image file under ``root`` (recursively, sorted by relative path: a torchvision ``ImageFolder`` or a
    flat folder). Labels are the first folder of the relative path where there is one (ImageFolder's classes)."""

    def __init__(self, root, lens, *, shape=None):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder of images")
        found = sorted(_image_files(root))
        if not found:
            raise ValueError(f"no images found in {root} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
        self.root, self.files, self.spec = root, [p for _, p in found], str(root)
        self.rel = [r for r, _ in found]
        self.lens = lens
        self.shape = tuple(shape) if shape is not None else None

    def __len__(self):
        return len(self.files)

    def _decode(self, i):
        with Image.open(self.files[i]) as im:   # decoded by the transform while the file is open (no copy)
            return cpu_input(self.lens, im)

    def __getitem__(self, i):
        try:
            return self._decode(i), True
        except Exception:  # noqa: BLE001 - any decoding failure: skipped (or reported by the miner in strict mode)
            return torch.zeros(self.sample_shape()), False

    def sample_shape(self):
        if self.shape is None:
            if self.lens.input_size is not None:
                self.shape = tuple(self.lens.input_size)
            else:
                for j in range(len(self)):
                    try:
                        self.shape = tuple(self._decode(j).shape)
                        break
                    except Exception:  # noqa: BLE001
                        continue
                else:
                    raise ValueError(f"none of the {len(self)} files in {self.root} could be decoded")
        return self.shape

    def error_of(self, i: int) -> str:
        """Why image ``i`` cannot be decoded (for the report)."""
        try:
            self._decode(i)
        except Exception as e:  # noqa: BLE001
            return f"{type(e).__name__}: {e}"
        return "decoded on a second try"

    def ids(self, i: int) -> str:
        return self.rel[i]

    def name_of(self, i: int) -> str:
        return str(self.files[i])

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": "folder", "images": len(self)}


class FashionSplit(_Source):
    """The bundled Fashion-MNIST split ``"train"`` (60,000 images) or ``"test"`` (10,000), through the lens's
    transform."""

    def __init__(self, split, lens):
        from ..zoo.data import load_fashion_mnist
        self.images, self.labels = load_fashion_mnist(split)
        self.spec, self.lens = f"fashion-mnist:{split}", lens

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return cpu_input(self.lens, Image.fromarray(self.images[i])), True

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": "fashion-mnist", "images": len(self)}


class Wrapped(_Source):
    """A map-style ``Dataset`` from Python; its items are images or data-set items holding one, read as
    :func:`zfwidgets.core.inputs.image_of` says."""

    def __init__(self, dataset, lens, spec=None):
        try:
            n = len(dataset)
        except TypeError:
            raise TypeError("the data set must define __len__ (a map-style torch Dataset)") from None
        if n == 0:
            raise ValueError("the data set is empty")
        self.dataset, self.lens, self.n = dataset, lens, n
        self.spec = spec or type(dataset).__name__

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return cpu_input(self.lens, self.dataset[i]), True

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": "python", "images": len(self)}


class Limited(_Source):
    """The first ``n`` images of a source."""

    def __init__(self, source, n):
        self.source, self.n = source, min(int(n), len(source))
        self.spec = source.spec

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source[i]

    def ids(self, i):
        return self.source.ids(i)

    def name_of(self, i):
        return self.source.name_of(i)

    def error_of(self, i):
        return self.source.error_of(i) if hasattr(self.source, "error_of") else "cannot be decoded"

    def describe(self) -> dict:
        d = dict(self.source.describe())
        d.update(images=self.n, limit=self.n)
        return d


def open_data(data, lens, *, limit=None):
    """``(source, loader options)`` for ``data``: a folder path, ``"fashion-mnist:train"`` / ``":test"``, a
    map-style ``Dataset`` or a ``DataLoader`` over one (read in order; its batch size and workers are the defaults)."""
    opts = {}
    if isinstance(data, (str, os.PathLike)):
        s = str(data)
        if s.startswith("fashion-mnist:"):
            split = s.split(":", 1)[1]
            if split not in ("train", "test"):
                raise ValueError(f"unknown Fashion-MNIST split {split!r}: use 'fashion-mnist:train' or "
                                 "'fashion-mnist:test'")
            src = FashionSplit(split, lens)
        else:
            if not Path(s).exists():
                raise ValueError(f"{s} does not exist (expected a folder of images, 'fashion-mnist:train' or "
                                 "'fashion-mnist:test')")
            src = ImageFiles(s, lens)
    elif isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            raise TypeError("the DataLoader reads an IterableDataset: the miner needs random access (a map-style "
                            "Dataset) to resume, shard and re-read the winners")
        if data.batch_sampler is not None and not isinstance(data.batch_sampler.sampler, SequentialSampler):
            raise ValueError("the DataLoader shuffles or samples: the miner numbers images by their place in the "
                             "data set; pass a DataLoader with shuffle=False (or the Dataset itself)")
        src = Wrapped(data.dataset, lens)
        if data.batch_size:
            opts["batch_size"] = data.batch_size
        opts["workers"] = data.num_workers
    elif isinstance(data, IterableDataset):
        raise TypeError("an IterableDataset has no random access: the miner needs a map-style Dataset")
    elif isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        src = Wrapped(data, lens)
    else:
        raise TypeError(f"data must be a folder path, 'fashion-mnist:train'/'fashion-mnist:test', a Dataset or a "
                        f"DataLoader; got {type(data).__name__}")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        src = Limited(src, limit)
    return src, opts
