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

The aliasing ZF saw in AlexNet's second layer (grid-like projections, from the first layer's stride 4) is
measured by :func:`layer_aliasing`: the strongest activation of every map of a layer is projected back to
the input (deconvnet), and :func:`alias_energy` gives the share of each projection's energy near the
*alias frequencies* of a stride ``s``: the points ``(a/s, b/s)`` (integers ``a, b`` not both 0) of the
frequency square ``[-1/2, 1/2)^2`` cycles per pixel, where a signal upsampled by ``s`` (the deconvnet's
transposed stride-``s`` convolution) puts the copies of its spectrum. A bin counts when it lies within
``1/(4s)`` of such a point in both axes (a square a quarter of the spacing across); the projection (its
channels summed, its mean removed, tapered by a Hann window so that its edges put no sidelobes on the axes) is
zero-padded to at least 4 times its size, a multiple of ``s``, so that the points fall on bins. A white spectrum scores the squares' share of the area (8/36 = 0.22 for ``s = 3``);
a smooth projection less; a grid of period ``s`` up to 1.

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

from ..core.inputs import DEFAULT_BATCH_SIZE, gather
from ._common import check_lens, progress_flag, run_layers

__all__ = ["FilterHealth", "filter_health", "band_energies", "filter_spectrum", "BAND_EDGES", "BAND_NAMES",
           "alias_energy", "Aliasing", "layer_aliasing"]

#: radial frequency edges, cycles per pixel: low < 1/6 <= mid < 1/3 <= high (thirds of Nyquist)
BAND_EDGES = (1.0 / 6.0, 1.0 / 3.0)
BAND_NAMES = ("low", "mid", "high")


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
    lo, hi = (float(e) for e in edges)
    if not 0 < lo < hi:
        raise ValueError(f"band edges must satisfy 0 < low/mid < mid/high, got {edges}")
    power = filter_spectrum(weights, n_fft)
    n = power.shape[-1]
    f = np.fft.fftfreq(n)
    r = np.hypot(f[:, None], f[None, :])
    masks = (r < lo, (r >= lo) & (r < hi), r >= hi)
    return np.stack([power[:, m].sum(1) for m in masks], axis=1)


def filter_spectrum(weights, n_fft: int | None = None) -> np.ndarray:
    """F x n x n: each filter's power spectrum ``|DFT|^2 / n^2`` summed over input channels, zero-padded to
    ``n = n_fft`` (default as in :func:`band_energies`), frequency bins in ``numpy.fft.fftfreq`` order (zero
    frequency at ``[0, 0]``; ``numpy.fft.fftshift`` centres it). :func:`band_energies` sums it by band.

    Example:
        >>> filter_spectrum(np.ones((1, 1, 5, 5))).shape      # zero-padded to the default n_fft
        (1, 64, 64)
        >>> round(float(filter_spectrum(np.ones((1, 1, 5, 5))).sum() / 25), 6)    # Parseval: the squared norm
        1.0
    """
    w = weights.detach().cpu().double().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights, float)
    if w.ndim != 4:
        raise ValueError(f"weights must be F x C x kh x kw, got shape {w.shape}")
    n = _n_fft(w.shape[2:]) if n_fft is None else int(n_fft)
    if n < max(w.shape[2:]):
        raise ValueError(f"n_fft={n} is smaller than the kernel {w.shape[2]}x{w.shape[3]}")
    return (np.abs(np.fft.fft2(w, s=(n, n), axes=(2, 3))) ** 2).sum(1) / (n * n)


def _alias_mask(n: int, period: int) -> np.ndarray:
    """n x n bool: the DFT bins (``n`` a multiple of ``period``) strictly within ``1/(4 period)`` cycles per pixel,
    in both axes, of an alias frequency ``(a/period, b/period)`` other than 0; in integer bin arithmetic, so
    that no bin on a square's edge depends on rounding."""
    k = np.fft.fftfreq(n, 1.0 / n).round().astype(np.int64)     # signed bin index: -n/2 .. n/2 - 1
    step = n // period
    points = [a * step for a in range(-(period // 2), period // 2 + 1) if -n <= 2 * a * step < n]
    near = np.zeros((n, n), bool)
    for a in points:
        for b in points:
            if a == 0 and b == 0:
                continue
            dy = np.minimum(np.abs(k - a), n - np.abs(k - a))   # on the circle: -1/2 and 1/2 are one frequency
            dx = np.minimum(np.abs(k - b), n - np.abs(k - b))
            near |= (4 * period * dy < n)[:, None] & (4 * period * dx < n)[None, :]
    return near


def _radial_expectation(power: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per image, the power the ``mask`` bins would have without a grid: each bin gets the mean power of the
    bins outside the mask at its radius (rings one bin wide)."""
    n = power.shape[-1]
    f = np.fft.fftfreq(n)
    ring = np.rint(np.hypot(f[:, None], f[None, :]) * n).astype(np.int64)   # radius in bins
    rings = ring[mask]
    out = np.zeros(power.shape[0])
    for r in np.unique(rings):
        beside = (ring == r) & ~mask
        if beside.any():
            out += power[:, beside].mean(1) * int((rings == r).sum())
    return out


def _alias_fft_size(side: int, period: int) -> int:
    """At least 4 times the image's side, a multiple of ``period`` (so the alias frequencies fall on bins)."""
    return period * int(np.ceil(4 * side / period))


def alias_energy(images, period: int, *, relative: bool = False) -> np.ndarray:
    """Share of each image's energy near the alias frequencies of a stride ``period`` (see the module docstring).

    ``images``: H x W, C x H x W or N x C x H x W (channels are summed, each image's mean removed). Returns
    one score per image in [0, 1] (NaN for a constant image). ``relative=True`` instead returns the power near
    the alias frequencies over the power the same bins would have if each had the mean of the other bins at
    its radius (rings one bin wide): about 1 for an image without a grid of that period, whatever its
    spectrum's radial profile, well above 1 for a grid.

    Example:
        >>> grid = np.zeros((27, 27)); grid[::3, ::3] = 1               # a period-3 grid of dots
        >>> smooth = np.outer(np.hanning(27), np.hanning(27))
        >>> alias_energy(np.stack([grid, smooth])[:, None], 3).round(2)
        array([1., 0.])
    """
    if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 2:
        raise ValueError(f"period must be an int >= 2 (a stride), got {period!r}")
    x = images.detach().cpu().double().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, float)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"images must be H x W, C x H x W or N x C x H x W, got shape {x.shape}")
    x = x.sum(1)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    # a Hann window: without it the image's edges (a step to the zero padding) put a cross of sidelobes along
    # both frequency axes, through the alias points (a/s, 0) and (0, b/s)
    x = x * np.outer(np.hanning(x.shape[1] + 2)[1:-1], np.hanning(x.shape[2] + 2)[1:-1])
    n = _alias_fft_size(max(x.shape[1:]), period)
    power = np.abs(np.fft.fft2(x, s=(n, n))) ** 2
    total = power.sum(axis=(1, 2))
    mask = _alias_mask(n, int(period))
    if relative:
        near, ring = power[:, mask].sum(1), _radial_expectation(power, mask)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((total > 1e-24 * n * n) & (ring > 0), near / np.where(ring > 0, ring, 1), np.nan)
    near = power[:, mask].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 1e-24 * n * n, near / np.where(total > 0, total, 1), np.nan)


@dataclass
class Aliasing:
    """The alias-frequency energy of a layer's projections (see :func:`layer_aliasing`).

    ``score`` (one per map: the share of its projection's energy near the alias frequencies of ``period``),
    ``relative`` (per map: that power density over the density at the same radii elsewhere; 1: no grid),
    ``projections`` (maps x C x H x W, the deconvnet projection of each map's strongest activation over the
    images), ``image_index`` (which image held it), ``white`` (the score of a white spectrum: the share of
    the frequency square that counts), ``other`` (the same for the second lens, if one was given).
    """
    model: str
    layer: str
    period: int
    score: np.ndarray
    projections: np.ndarray
    image_index: np.ndarray
    white: float
    relative: np.ndarray = None
    other: "Aliasing | None" = field(default=None, repr=False)

    @property
    def mean(self) -> float:
        """The mean score over the maps whose projection is not all zero."""
        return float(np.nanmean(self.score)) if np.isfinite(self.score).any() else float("nan")

    def summary(self) -> str:
        lines = []
        for a in (self, self.other):
            if a is not None:
                lines.append(f"{a.model} {a.layer}: energy near the stride-{a.period} alias frequencies "
                             f"{a.mean:.3f} (mean of {int(np.isfinite(a.score).sum())} maps; a white spectrum "
                             f"{a.white:.3f}); against the same radii elsewhere {np.nanmedian(a.relative):.2f}x "
                             f"(median; 1: no grid)")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def _aliasing_one(lens, images, layer, period, channels, batch_size, show_progress) -> Aliasing:
    from ..core.project import project
    name, path, _ = lens.resolve(layer)
    data = gather(lens, images)
    best_val, best_img = None, None
    start = 0
    for _, x in data.batches(batch_size, progress=show_progress, desc="aliasing"):
        _, acts = run_layers(lens, x, [name])
        a = acts[name]
        if a.dim() != 4:
            raise ValueError(f"layer_aliasing needs a spatial layer; {name!r} gives shape {tuple(a.shape)}")
        peak = a.flatten(2).amax(2)                  # N x C
        val, idx = peak.max(0)
        if best_val is None:
            best_val, best_img = val, idx + start
        else:
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_img = torch.where(better, idx + start, best_img)
        start += a.shape[0]
    xs = data.tensor()
    if channels is None:
        channels = range(len(best_img))
    elif isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
        channels = range(min(int(channels), len(best_img)))      # the first n maps (all, if fewer)
    channels = [int(c) for c in channels]
    if not channels or any(not 0 <= c < len(best_img) for c in channels):
        raise ValueError(f"channels must be a non-empty list of maps of {name!r} (0..{len(best_img) - 1}), "
                         f"got {channels!r}")
    best_img = best_img[channels]
    projections = np.stack([project(lens, xs[int(i)], name, c, method="deconvnet").pixels.cpu().float().numpy()
                            for c, i in zip(channels, best_img.tolist())])
    score = alias_energy(projections, period)
    relative = alias_energy(projections, period, relative=True)
    white = float(_alias_mask(_alias_fft_size(max(projections.shape[2:]), period), period).mean())
    return Aliasing(lens.name, name, int(period), score, projections, best_img.numpy(), white, relative)


def layer_aliasing(lens, images, layer="conv2", period: int = 3, *, other=None, channels=None,
                   batch_size: int = DEFAULT_BATCH_SIZE, progress=True, show_progress=None) -> Aliasing:
    """Aliasing in a layer's projections (ZF Fig. 6 (c-e)): the energy near a stride's alias frequencies.

    The strongest activation of each map of ``layer`` over ``images`` is projected back to the input with
    the deconvnet; :func:`alias_energy` scores each projection at the alias frequencies of ``period`` (a
    first layer's stride). ``other`` (a second lens) is measured on the same images, layer and period.
    ``channels``: the maps scored: a list, or an int n for the first n (all of them if the layer has fewer);
    default every map (each costs a projection: 192 of them on AlexNet's conv2).

    Example:
        >>> a = layer_aliasing(zfwidgets.load("zfnet-fashion"), zfwidgets.samples(), "conv2", period=3,
        ...                    progress=False)
        >>> a.score.shape, round(a.white, 3)
        ((64,), 0.222)
    """
    show_progress = progress_flag(progress, show_progress)
    check_lens(lens)
    if other is not None:
        check_lens(other)
    if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 2:
        raise ValueError(f"period must be an int >= 2 (a stride), got {period!r}")
    result = _aliasing_one(lens, images, layer, period, channels, batch_size, show_progress)
    if other is not None:
        result.other = _aliasing_one(other, images, layer, period, channels, batch_size, show_progress)
    return result


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
            if isinstance(info.module, nn.Conv2d):
                return info.name
            # a block (conv-BN-activation, a ResNet stem...): its first convolution, by path
            return next(f"{info.path}.{p}" for p, m in info.module.named_modules() if isinstance(m, nn.Conv2d))
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
        data = gather(lens, images)
        never = torch.zeros(n_filters, dtype=torch.float64)
        for _, x in data.batches(batch_size, progress=show_progress, desc="filter health"):
            _, acts = run_layers(lens, x, [name])
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
                  batch_size: int = DEFAULT_BATCH_SIZE, progress=True, show_progress=None) -> FilterHealth:
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
    show_progress = progress_flag(progress, show_progress)
    check_lens(lens)
    if other is not None:
        check_lens(other)
    if isinstance(dead_threshold, bool) or not isinstance(dead_threshold, (int, float)) \
            or not 0 < dead_threshold <= 1:
        raise ValueError(f"dead_threshold must be a number in (0, 1], got {dead_threshold!r}")
    result = _health_one(lens, images, layer, dead_threshold, batch_size, show_progress)
    if other is not None:
        result.other = _health_one(other, images, other_layer, dead_threshold, batch_size, show_progress)
    return result
