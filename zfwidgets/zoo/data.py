"""Offline data sets: Fashion-MNIST from Debian's package (or a torchvision download root), and
scikit-learn's 8x8 digits upsampled to 28x28 as the second data set for feature generalisation.

Example:
    >>> x, y = load_fashion_mnist("test")      # uint8 (10000, 28, 28), int64 (10000,)
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["load_fashion_mnist", "load_digits28", "load_fashion_transfer", "keep_classes", "FASHION_CLASSES", "FASHION_MEAN", "FASHION_STD",
           "find_fashion_mnist"]

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# statistics of the 60,000 training images, pixel values scaled to [0, 1]
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _candidates(root):
    if root is not None:
        root = Path(root)
        yield root
        yield root / "FashionMNIST" / "raw"
        yield root / "fashion-mnist"
    env = os.environ.get("ZFWIDGETS_FASHION_MNIST")
    if env:
        yield Path(env)
    yield DEBIAN_DIR
    yield Path.home() / ".cache" / "zfwidgets" / "FashionMNIST" / "raw"


def find_fashion_mnist(root=None) -> Path:
    """Return the folder holding the four Fashion-MNIST idx files, or raise FileNotFoundError saying where we looked."""
    tried = []
    for d in _candidates(root):
        tried.append(str(d))
        if (d / "t10k-labels-idx1-ubyte.gz").exists() or (d / "t10k-labels-idx1-ubyte").exists():
            return d
    raise FileNotFoundError(
        "Fashion-MNIST not found; looked in " + ", ".join(tried)
        + ". Install it with `apt-get install dataset-fashion-mnist`, or pass root= a torchvision "
        "download root (torchvision.datasets.FashionMNIST(root, download=True)).")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (magic {magic:#x})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {np.prod(shape)} values, found {arr.size}")
    return arr.reshape(shape)


def load_fashion_mnist(split: str = "train", root=None):
    """Fashion-MNIST images (uint8, N x 28 x 28) and labels (int64, N) for ``split`` in {"train", "test"}."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = find_fashion_mnist(root)
    prefix = "train" if split == "train" else "t10k"

    def pick(name):
        p = d / (name + ".gz")
        return p if p.exists() else d / name

    x = _read_idx(pick(f"{prefix}-images-idx3-ubyte"))
    y = _read_idx(pick(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return x, y


def load_digits28(seed: int = 0, test_fraction: float = 0.5):
    """scikit-learn's 1,797 8x8 handwritten digits, upsampled to 28x28 uint8 (bilinear), split in two.

    Returns ``(x_train, y_train, x_test, y_test)``; the split is stratified and fixed by ``seed``.
    Ships with scikit-learn, so it works offline: the second data set for ZF §5.2.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    # 8x8 digits fill the frame; Fashion-MNIST objects sit in a ~20px box inside 28px: match that
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4))
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test_idx.extend(idx[:n_test])
        train_idx.extend(idx[n_test:])
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def keep_classes(x: np.ndarray, y: np.ndarray, classes) -> list:
    """``[x, y]`` of the images of ``classes`` only, labels renumbered 0..len(classes)-1 in that order.

    Example:
        >>> keep_classes(np.arange(4), np.array([3, 1, 3, 0]), [3, 0])
        [array([0, 2, 3]), array([0, 0, 1])]
    """
    classes = np.asarray(classes, dtype=np.int64)
    keep = np.isin(y, classes)
    remap = np.full(max(int(y.max()), int(classes.max())) + 1, -1, np.int64)
    remap[classes] = np.arange(len(classes))
    return [x[keep], remap[y[keep]]]


def load_fashion_transfer(classes=None, root=None, train: int | None = None, test: int | None = None):
    """The Fashion-MNIST classes ``zfnet-fashion-half`` was *not* trained on: the target of the within-domain
    transfer (ZF Sec. 5.2 at small scale).

    ``classes``: default the five not in :data:`zfwidgets.zoo.models.HALF_CLASSES` (Pullover, Dress, Shirt,
    Sneaker, Ankle boot). Returns ``(x_train, y_train, x_test, y_test)`` (uint8 N x 28 x 28, int64 labels
    renumbered 0..len(classes)-1 in the order of ``classes``): the training split is the pool N per class are
    drawn from (or its first ``train`` images: a smaller pool, faster to featurise), the test split (or its
    first ``test`` images) measures accuracy.

    Example:
        >>> x_train, y_train, x_test, y_test = load_fashion_transfer()
        >>> x_train.shape, x_test.shape, sorted(set(y_test.tolist()))
        ((30000, 28, 28), (5000, 28, 28), [0, 1, 2, 3, 4])
    """
    from .models import HALF_CLASSES
    classes = [c for c in range(10) if c not in HALF_CLASSES] if classes is None else [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes) or not all(0 <= c < 10 for c in classes):
        raise ValueError(f"classes must be distinct Fashion-MNIST classes 0..9, got {classes!r}")
    out = []
    for split in ("train", "test"):
        out += keep_classes(*load_fashion_mnist(split, root), classes)
    if train is not None:
        out[0], out[1] = out[0][:train], out[1][:train]
    if test is not None:
        out[2], out[3] = out[2][:test], out[3][:test]
    return tuple(out)
