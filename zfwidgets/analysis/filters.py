"""Filter diagnosis (ZF §4.1, Fig. 6): is a layer's filter bank healthy?

ZF looked at AlexNet's first layer (11x11, stride 4) and saw a mix of extreme high- and low-frequency
filters with few mid frequencies, and dead filters; a 7x7 stride-2 first layer fixed both. For every
filter of a conv layer (the first one by default) :func:`filter_health` reports

- ``weight_norm``: the L2 norm of the filter's weights (all input channels);
- ``dead_fraction``: over a set of images, the fraction on which the filter's map is *never positive*
  (the output of the conv module is ``<= 0`` at every position, so its ReLU output is all zero);
- ``band_energy``: the filter's energy in three spatial-frequency bands. Each filter (every input
  channel) is zero-padded to ``n_fft x n_fft`` (64, or the next power of two >= 4 k for kernels larger
  than 16) and transformed with the 2-D DFT; a frequency bin ``(fy, fx)`` in cycles per pixel
  (``numpy.fft.fftfreq``) has radial frequency ``r = sqrt(fy^2 + fx^2)``, from 0 up to ``0.5 sqrt 2`` in
  the corners. The bands split at thirds of the Nyquist frequency (0.5 cycles/pixel):
  **low** ``r < 1/6``, **mid** ``1/6 <= r < 1/3``, **high** ``r >= 1/3`` (edges: :data:`BAND_EDGES`).
  Energies are ``sum |DFT|^2 / n_fft^2`` over the bins of a band, summed over input channels, so the
  three bands add up to ``weight_norm ** 2`` (Parseval). ``band_fraction`` divides by that total.

A zero-padded transform shows the filter's true (continuous) spectrum, sidelobes included: a constant
5x5 filter puts about 81% of its energy in the low band (the rest in the sinc sidelobes of the box),
a 5x5 checkerboard over 99% in the high band.

Example:
    >>> h = zfwidgets.filter_health(lens, images)              # first conv layer
    >>> h.band_fraction[:4, 2]                                 # share of high frequencies per filter
    array([0.42, 0.37, 0.53, 0.55])
    >>> h2 = zfwidgets.filter_health(lens, images, other=zfwidgets.load("allconv-fashion"))
    >>> h2.plot()                                              # two filter banks side by side (Fig. 6)
    <Figure size 1040x900 with 8 Axes>
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._progress import progress as _progress

__all__ = ["FilterHealth", "filter_health", "band_energies", "BAND_EDGES", "BAND_NAMES"]

#: radial frequency edges, cycles per pixel: low < 1/6 <= mid < 1/3 <= high (thirds of Nyquist)
BAND_EDGES = (1.0 / 6.0, 1.0 / 3.0)
BAND_NAMES = ("low", "mid", "high")


# ----- input helpers shared by the analysis modules ---------------------------------------------
def _unwrap(item):
    """A bundled :class:`~zfwidgets.zoo.Sample` (or anything with ``.image``) gives its image."""
    return item.image if hasattr(item, "image") and not isinstance(item, (torch.Tensor, np.ndarray)) else item


def _check_batch_tensor(lens, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_floating_point(x):
        raise TypeError(f"a tensor batch of images must be float (preprocessed model input), got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"a tensor batch of images must be N x C x H x W, got shape {tuple(x.shape)}")
    if x.shape[1] != lens.channels:
        raise ValueError(f"the model takes {lens.channels}-channel input, got {x.shape[1]} channels "
                         f"(shape {tuple(x.shape)})")
    if lens.input_size is not None and tuple(x.shape[2:]) != tuple(lens.input_size[1:]):
        raise ValueError(f"the model takes {lens.input_size[1]}x{lens.input_size[2]} input, got "
                         f"{x.shape[2]}x{x.shape[3]}")
    if not torch.isfinite(x).all():
        raise ValueError("the images contain NaN or infinite values")
    return x.to(lens.device)


def _image_list(images):
    """Images as a list of single images (PIL, uint8 arrays, tensors C x H x W), or a float batch tensor."""
    if images is None:
        raise TypeError("images must be given (a list of images, a uint8 array N x H x W [x C], or a float "
                        "tensor N x C x H x W of preprocessed input), got None")
    if isinstance(images, torch.Tensor):
        if torch.is_floating_point(images):
            if images.dim() == 3:
                raise ValueError(f"a float tensor of shape {tuple(images.shape)} is one image; pass a batch "
                                 "N x C x H x W (or a list of images)")
            return images
        if images.dtype == torch.uint8:
            images = images.cpu().numpy()
        else:
            raise TypeError(f"a tensor of images must be float (preprocessed) or uint8 pixels, got {images.dtype}")
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"an array of images must be uint8 pixels N x H x W or N x H x W x C, got dtype "
                            f"{images.dtype}; pass preprocessed input as a float tensor N x C x H x W")
        if images.ndim not in (3, 4):
            raise ValueError(f"an array of images must be N x H x W or N x H x W x C, got shape {images.shape}")
        return list(images)
    if isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise TypeError("images must be a list of images, a uint8 array N x H x W [x C] or a float tensor "
                        f"N x C x H x W; got {type(images).__name__}")
    return [_unwrap(im) for im in images]


def _num_images(images) -> int:
    return int(images.shape[0]) if isinstance(images, torch.Tensor) else len(images)


def _input_batches(lens, images, batch_size: int = 256):
    """Yield preprocessed N x C x H x W batches on the lens's device (``images`` from :func:`_image_list`)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = _num_images(images)
    if n == 0:
        raise ValueError("no images given")
    for i in range(0, n, batch_size):
        chunk = images[i:i + batch_size]
        if isinstance(chunk, torch.Tensor):
            yield _check_batch_tensor(lens, chunk)
        else:
            yield torch.cat([lens.to_input(im) for im in chunk])


def _as_labels(labels, n: int) -> torch.Tensor:
    """Labels as an int64 tensor of length ``n``."""
    if isinstance(labels, torch.Tensor):
        t = labels.detach().cpu()
    else:
        try:
            arr = np.asarray(labels)
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"labels must be a sequence of ints, got {type(labels).__name__}") from e
        if arr.dtype == object:
            raise TypeError("labels must be a sequence of ints")
        t = torch.from_numpy(arr.copy()) if arr.ndim else torch.as_tensor(arr)
    if t.dtype == torch.bool or torch.is_floating_point(t) or torch.is_complex(t):
        raise TypeError(f"labels must be integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"labels must be one int per image (a 1-D sequence), got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"got {n} images but {t.shape[0]} labels")
    if n and int(t.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(t.min())}")
    return t.long()


def _run(lens, x: torch.Tensor, layers, *, logits: bool = False):
    """``lens.run`` under ``torch.no_grad`` (its ``inference_mode`` trips the capture's version check).

    Returns ``(logits or None, {friendly name: detached output})``; with ``logits=False`` the forward stops
    once the asked layers are computed. The model's hooks and ``training`` flags are restored on exit.
    """
    from ..core.capture import Capture, ModelGuard
    resolved = {}
    for layer in layers:
        name, _, module = lens.resolve(layer)
        resolved[name] = module
    out = None
    with torch.no_grad(), ModelGuard(lens.model), \
            Capture(lens.model, resolved, stop=not logits and bool(resolved), detach=True) as cap:
        lens.forward_count += 1
        out = lens.model(x)
        if logits:
            out = lens._check_logits(out)
    missing = [n for n in resolved if n not in cap.outputs]
    if missing:
        raise ValueError(f"layer(s) {missing} did not run during the forward; choose other layers")
    return (out if logits else None), dict(cap.outputs)


def _progress_flag(progress, show_progress):
    """The progress setting: ``progress`` (as the other analyses call it), or its alias ``show_progress``."""
    flag = progress if show_progress is None else show_progress
    if not (isinstance(flag, bool) or callable(flag)):
        raise TypeError(f"progress must be True, False or a callable f(done, total), got {type(flag).__name__}")
    return flag


def _check_lens(lens):
    from ..lens import Lens
    if not isinstance(lens, Lens):
        raise TypeError(f"expected a zfwidgets.Lens, got {type(lens).__name__}; wrap a model with "
                        "zfwidgets.Lens(model, input_size=...) or use zfwidgets.load(name)")
    return lens


# ----- spectra ----------------------------------------------------------------------------------
def _n_fft(kernel) -> int:
    k = max(kernel)
    return 64 if k <= 16 else 1 << int(np.ceil(np.log2(4 * k)))


def band_energies(weights, n_fft: int | None = None, edges=BAND_EDGES) -> np.ndarray:
    """Energy of each filter in the low, mid and high radial-frequency bands.

    ``weights``: F x C x kh x kw (a conv layer's weights). Returns F x 3 (see the module docstring for
    the padding and the band edges); rows sum to each filter's squared L2 norm.

    Example:
        >>> band_energies(np.ones((1, 1, 5, 5)))[0] / 25      # about [0.81, 0.12, 0.07]
        array([0.813, 0.120, 0.067])
    """
    w = weights.detach().cpu().double().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights, float)
    if w.ndim != 4:
        raise ValueError(f"weights must be F x C x kh x kw, got shape {w.shape}")
    lo, hi = (float(e) for e in edges)
    if not 0 < lo < hi:
        raise ValueError(f"band edges must satisfy 0 < low/mid < mid/high, got {edges}")
    n = _n_fft(w.shape[2:]) if n_fft is None else int(n_fft)
    if n < max(w.shape[2:]):
        raise ValueError(f"n_fft={n} is smaller than the kernel {w.shape[2]}x{w.shape[3]}")
    power = (np.abs(np.fft.fft2(w, s=(n, n), axes=(2, 3))) ** 2).sum(1) / (n * n)  # F x n x n
    f = np.fft.fftfreq(n)
    r = np.hypot(f[:, None], f[None, :])
    masks = (r < lo, (r >= lo) & (r < hi), r >= hi)
    return np.stack([power[:, m].sum(1) for m in masks], axis=1)


# ----- the analysis -----------------------------------------------------------------------------
@dataclass
class FilterHealth:
    """Health of one conv layer's filters (see :func:`filter_health`).

    Arrays have one row per filter: ``weights`` (F x C x kh x kw), ``weight_norm`` (F),
    ``dead_fraction`` (F, NaN when no images were given), ``dead`` (F bool: ``dead_fraction >=
    dead_threshold``), ``band_energy`` (F x 3: low, mid, high), ``band_fraction`` (F x 3, rows sum to 1;
    NaN for an all-zero filter). ``other`` holds the same for the second lens, if one was given.
    """
    model: str
    layer: str
    weights: np.ndarray
    weight_norm: np.ndarray
    dead_fraction: np.ndarray
    dead: np.ndarray
    band_energy: np.ndarray
    band_fraction: np.ndarray
    n_images: int
    dead_threshold: float
    band_edges: tuple = BAND_EDGES
    other: "FilterHealth | None" = field(default=None, repr=False)

    @property
    def mean_band_fraction(self) -> np.ndarray:
        """The layer's energy share per band (total energy of all filters, low/mid/high)."""
        total = self.band_energy.sum(0)
        return total / total.sum() if total.sum() > 0 else np.full(3, np.nan)

    def summary(self) -> str:
        """A few lines: number of filters, dead ones, the band shares."""
        lines = []
        for h in (self, self.other):
            if h is None:
                continue
            dead = "n/a (no images)" if h.n_images == 0 else f"{int(h.dead.sum())} of {len(h.dead)}"
            lo, mid, hi = h.mean_band_fraction
            lines.append(f"{h.model} {h.layer}: {len(h.weight_norm)} filters {h.weights.shape[2]}x"
                         f"{h.weights.shape[3]}; dead {dead}; energy low {lo:.0%} mid {mid:.0%} high {hi:.0%}")
        return "\n".join(lines)

    def plot(self, *, max_filters: int = 96):
        """The filter grid with per-filter health bars, and the second model beside it (Fig. 6)."""
        from ..plot.filters import plot_filter_health
        return plot_filter_health(self, max_filters=max_filters)


def _first_conv(lens):
    for info in lens.table:
        if info.kind == "conv":
            return info.name
    raise ValueError(f"{lens.name} has no conv layer")  # Lens refuses such models already


def _health_one(lens, images, layer, dead_threshold, batch_size, show_progress) -> FilterHealth:
    layer = _first_conv(lens) if layer is None else layer
    name, path, module = lens.resolve(layer)
    if not isinstance(module, nn.Conv2d):
        raise ValueError(f"filter_health needs a conv layer (nn.Conv2d); {name!r} is {type(module).__name__}")
    w = module.weight.detach().cpu().double()
    norm = w.flatten(1).norm(dim=1).numpy()
    energy = band_energies(w)
    total = energy.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(total > 0, energy / np.where(total > 0, total, 1), np.nan)
    n_filters = w.shape[0]
    n = 0
    if images is None:
        dead_fraction = np.full(n_filters, np.nan)
    else:
        imgs = _image_list(images)
        never = torch.zeros(n_filters, dtype=torch.float64)
        total_n = _num_images(imgs)
        batches = _input_batches(lens, imgs, batch_size)
        for x in _progress(batches, total=-(-total_n // batch_size), desc="filter health", enabled=show_progress):
            _, acts = _run(lens, x, [name])
            a = acts[name]
            if a.dim() != 4 or a.shape[1] != n_filters:
                raise ValueError(f"layer {name!r} returned shape {tuple(a.shape)}, expected N x {n_filters} x H x W")
            never += (a.flatten(2).amax(2) <= 0).double().sum(0).cpu()
            n += a.shape[0]
        dead_fraction = (never / n).numpy()
    dead = np.zeros(n_filters, bool) if images is None else dead_fraction >= dead_threshold
    return FilterHealth(lens.name, name, module.weight.detach().cpu().float().numpy().copy(), norm,
                        dead_fraction, dead, energy, fraction, n, float(dead_threshold))


def filter_health(lens, images=None, layer=None, *, other=None, other_layer=None, dead_threshold: float = 0.99,
                  batch_size: int = 256, progress=True, show_progress=None) -> FilterHealth:
    """Per-filter health of a conv layer: weight norm, dead fraction, spectral energy by band (ZF Fig. 6).

    Args:
        lens: a :class:`zfwidgets.Lens`.
        images: images over which to count dead filters (a list of images or bundled samples, a uint8
            array N x H x W [x C], or a float tensor N x C x H x W of preprocessed input). ``None``:
            weights only (``dead_fraction`` is NaN).
        layer: the conv layer (default: the first one).
        other: a second lens (e.g. AlexNet vs its fix, zfnet vs allconv) analysed the same way, on the same
            images; its result is ``result.other`` and the figure shows both side by side.
        other_layer: the layer of ``other`` (default: its first conv layer).
        dead_threshold: a filter is ``dead`` when its map is never positive on at least this fraction of
            the images (0.99: never or almost never active).
        batch_size: images per forward.
        progress: a progress bar in notebooks/terminals (``False`` for none, or a callable
            ``f(done, total)``); ``show_progress`` is an alias.

    Example:
        >>> h = filter_health(zfwidgets.load("zfnet-fashion"), [s.image for s in zfwidgets.samples()],
        ...                   other=zfwidgets.load("allconv-fashion"))
        >>> h.dead_fraction.shape, h.band_fraction.sum(1)    # (32,), all ones
        ((32,), array([1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1.,
               1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1.]))
        >>> h.plot()
        <Figure size 1040x900 with 8 Axes>
    """
    show_progress = _progress_flag(progress, show_progress)
    _check_lens(lens)
    if other is not None:
        _check_lens(other)
    if isinstance(dead_threshold, bool) or not isinstance(dead_threshold, (int, float)) \
            or not 0 < dead_threshold <= 1:
        raise ValueError(f"dead_threshold must be a number in (0, 1], got {dead_threshold!r}")
    result = _health_one(lens, images, layer, dead_threshold, batch_size, show_progress)
    if other is not None:
        result.other = _health_one(other, images, other_layer, dead_threshold, batch_size, show_progress)
    return result
