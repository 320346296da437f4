"""Lesions without retraining, beside ZF's retrained ablations (§5.1, Table 3).

:func:`lesion` measures a model's accuracy on labelled images before and after knocking out feature maps
of one layer: ``mode="zero"`` sets the chosen channels (all by default) of the layer's output to zero;
``"mean"`` replaces them by their mean over the images (per position), which removes the information
they carry but keeps their average drive to the next layer; ``"skip"`` bypasses the layer (its output is
its input; only for layers whose input and output have the same shape). It works by a forward hook on
the layer that is removed in ``finally``: the model keeps its weights (bit for bit), hooks and
``training`` flags. :func:`lesion_sweep` does it for every layer.

ZF's own ablation retrains each variant (remove fc6/fc7, conv3/conv4, both; widen layers).
:func:`ablation_table` reads the small-scale version the training script ships with the bundled model
(``python -m zfwidgets.zoo.train --arch zfnet-fashion --ablation``), and the lesion figure shows both.

Example:
    >>> r = zfwidgets.lesion(lens, x_test, y_test, "conv3", channels=[0, 5, 7])
    >>> r.accuracy_before, r.accuracy_after
    (0.9, 0.9)
    >>> sweep = lesion_sweep(lens, x_test, y_test, fraction=0.5)
    >>> sweep.plot(ablation=zfwidgets.ablation_table("zfnet-fashion"))
    <Figure size 1150x420 with 2 Axes>
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch

from ..core.inputs import DEFAULT_BATCH_SIZE, gather
from ._common import check_lens, progress_flag

__all__ = ["Lesion", "LesionSweep", "AblationTable", "lesion", "lesion_sweep", "ablation_table"]

MODES = ("zero", "mean", "skip")


@dataclass
class Lesion:
    """Accuracy before and after the lesion of ``channels`` (``None``: all) of ``layer``.

    ``probabilities_before``/``_after``: N x K class probabilities of every image; ``labels``: the N labels.
    """
    layer: str
    channels: list | None
    mode: str
    n_images: int
    accuracy_before: float
    accuracy_after: float
    predictions_before: np.ndarray = field(repr=False)
    predictions_after: np.ndarray = field(repr=False)
    probabilities_before: np.ndarray | None = field(default=None, repr=False)
    probabilities_after: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    @property
    def drop(self) -> float:
        """Accuracy lost (before - after)."""
        return self.accuracy_before - self.accuracy_after

    def class_accuracy(self, after: bool = True) -> np.ndarray:
        """K: the accuracy on the images of each class (NaN for a class without images), after (or before)
        the lesion; K is the number of classes of the probabilities."""
        pred = self.predictions_after if after else self.predictions_before
        K = self.probabilities_after.shape[1]
        hits = np.bincount(self.labels, weights=(pred == self.labels).astype(float), minlength=K)[:K]
        count = np.bincount(self.labels, minlength=K)[:K]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, hits / np.maximum(count, 1), np.nan)

    def plot(self, ablation="auto", model: str | None = None):
        """The accuracy before/after, with the bundled retrained-ablation table beside it when available."""
        from ..plot.lesion import plot_lesions
        return plot_lesions(LesionSweep(model or "", self.accuracy_before, [self], self.n_images),
                            ablation=_auto_ablation(ablation, model))


@dataclass
class LesionSweep:
    """One :class:`Lesion` per layer, all measured on the same images."""
    model: str
    accuracy_before: float
    lesions: list
    n_images: int

    @property
    def layers(self) -> list:
        return [l.layer for l in self.lesions]

    @property
    def accuracy_after(self) -> np.ndarray:
        return np.array([l.accuracy_after for l in self.lesions])

    def table(self) -> str:
        """One line per lesioned layer: channels knocked out, accuracy after, drop."""
        lines = [f"{self.model}: accuracy {self.accuracy_before:.2%} on {self.n_images} images, without lesions"]
        for l in self.lesions:
            what = "all" if l.channels is None else f"{len(l.channels)}"
            if np.isnan(l.accuracy_after):
                lines.append(f"  {l.layer:<8} ({l.mode}, {what} channels): not applicable")
            else:
                lines.append(f"  {l.layer:<8} ({l.mode}, {what} channels): {l.accuracy_after:.2%} "
                             f"(drop {l.drop:+.2%})")
        return "\n".join(lines)

    def plot(self, ablation="auto"):
        """Accuracy after each layer's lesion, beside ZF Table 3's retrained ablations (if shipped)."""
        from ..plot.lesion import plot_lesions
        return plot_lesions(self, ablation=_auto_ablation(ablation, self.model))


@dataclass
class AblationTable:
    """ZF Table 3 at small scale: train and test error of retrained architecture variants.

    ``history`` has, per variant, its per-epoch curve (dicts with ``epoch``, ``train_accuracy``,
    ``test_accuracy``); empty lists for a table written without curves. A table trained with the plateau
    check (``check_epochs`` > 0: the recipe's last stage once more, after ``recipe_epochs``) also has
    ``recipe_test_error``, each variant's test error when the recipe ended; ``test_error`` is after the check.
    """
    name: str
    epochs: int
    seed: int
    variants: list
    descriptions: list
    parameters: np.ndarray
    train_error: np.ndarray
    test_error: np.ndarray
    command: str = ""
    history: list = field(default_factory=list)
    train_images: int = 0
    recipe_epochs: int = 0
    check_epochs: int = 0
    recipe_test_error: np.ndarray | None = None

    def table(self) -> str:
        """Text like ZF Table 3; with a plateau check, each variant's test error after the recipe and the check's
        change of it; with curves only, each variant's last-3-epoch test error range."""
        w = max(len(d) for d in self.descriptions)
        change = self.check_change()
        moves = self.plateau() if change is None else None
        head = f"{'variant':<{w}}  {'params':>9}  train err  test err"
        if change is not None:
            head += f"  after {self.recipe_epochs} ep  change"
        elif moves is not None:
            head += "  last 3 epochs"
        lines = [head]
        for k, (d, p, tr, te) in enumerate(zip(self.descriptions, self.parameters, self.train_error,
                                                self.test_error)):
            line = f"{d:<{w}}  {p:>9,}  {tr:>8.2%}  {te:>8.2%}"
            if change is not None:
                line += f"  {self.recipe_test_error[k]:>{len(str(self.recipe_epochs)) + 9}.2%}  {change[k]:>+6.2%}"
            elif moves is not None:
                line += f"  {moves[k]:>9.2%} range"
            lines.append(line)
        images = f" on {self.train_images:,} images" if self.train_images else ""
        if change is not None:
            return "\n".join(lines) + (f"\n({self.name}: the recipe's {self.recipe_epochs} epochs, then the plateau "
                                       f"check's {self.check_epochs} (its second stage again){images}, seed {self.seed})")
        return "\n".join(lines) + f"\n({self.name}, retrained {self.epochs} epochs each{images}, seed {self.seed})"

    def plateau(self, last: int = 3):
        """Per variant, the range (max - min) of the test error over its ``last`` epochs: how much it still
        moved when training stopped. ``None`` when the table has no curves."""
        if not self.history or any(len(h) < last for h in self.history):
            return None
        return np.array([np.ptp([1 - r["test_accuracy"] for r in h[-last:]]) for h in self.history])

    def check_change(self):
        """Per variant, the test error after the plateau check minus after the recipe (negative: the check still
        improved it); ``None`` for a table without the check. Both ends are annealed to a learning rate of
        zero, so this is how far each variant's recipe result was from its plateau."""
        if not self.check_epochs or self.recipe_test_error is None:
            return None
        return self.test_error - self.recipe_test_error

    def __str__(self):
        return self.table()

    def plot(self):
        from ..plot.lesion import plot_ablation
        return plot_ablation(self)

    def plot_curves(self):
        """Each variant's test error per epoch (the plateau each one was read at)."""
        from ..plot.lesion import plot_ablation_curves
        return plot_ablation_curves(self)


def _auto_ablation(ablation, model):
    if isinstance(ablation, str) and ablation == "auto":
        base = (model or "").split("@")[0]
        try:
            return ablation_table(base)
        except (FileNotFoundError, ValueError, TypeError):
            return None
    if ablation is not None and not isinstance(ablation, AblationTable):
        raise TypeError(f"ablation must be an AblationTable, 'auto' or None; got {type(ablation).__name__}")
    return ablation


def ablation_table(name: str = "zfnet-fashion", path=None) -> AblationTable:
    """The retrained-ablation table (ZF Table 3) shipped with a bundled model, or read from ``path``.

    Raises ``FileNotFoundError`` (saying which command writes it) when the table is not there.

    Example:
        >>> t = ablation_table("zfnet-fashion")
        >>> print(t.table())
        variant                                    params  train err  test err  after 17 ep  change
        the full model                            543,882     3.35%     6.66%        6.80%  -0.14%
        fully connected layers 6 and 7 removed    223,370     2.43%     6.73%        6.74%  -0.01%
        conv layers 3 and 4 removed               387,018     4.44%     6.84%        7.09%  -0.25%
        both groups removed                        66,506     4.21%     7.32%        7.45%  -0.13%
        conv3, conv4, conv5 twice as wide       1,276,298     2.44%     6.48%        6.54%  -0.06%
        fc6 and fc7 four times as wide          2,322,570     3.30%     6.76%        6.83%  -0.07%
        (zfnet-fashion: the recipe's 17 epochs, then the plateau check's 3 (its second stage again) on 60,000 images, seed 0)
    """
    from ..zoo import WEIGHTS_DIR, available
    if path is None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a bundled model name, got {type(name).__name__}")
        if name not in available():
            raise ValueError(f"unknown bundled model {name!r}; available: {available()}")
        path = WEIGHTS_DIR / f"{name}.ablation.json"
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; it is written by `python -m zfwidgets.zoo.train --arch "
                                f"{name} --ablation`")
    d = json.loads(path.read_text())
    try:
        rows = d["rows"]
        history = [[{k: (int(e[k]) if k == "epoch" else float(e[k]))
                     for k in ("epoch", "train_accuracy", "test_accuracy")} for e in r["history"]]
                   for r in rows] if all("history" in r for r in rows) else []
        return AblationTable(d.get("name", name), int(d.get("epochs", 0)), int(d.get("seed", 0)),
                             [r["variant"] for r in rows], [r.get("description", r["variant"]) for r in rows],
                             np.array([int(r.get("parameters", 0)) for r in rows]),
                             np.array([float(r["train_error"]) for r in rows]),
                             np.array([float(r["test_error"]) for r in rows]), d.get("command", ""),
                             history, int(d.get("train_images", 0)), int(d.get("recipe_epochs", 0)),
                             int(d.get("check_epochs", 0)),
                             np.array([float(r["recipe_test_error"]) for r in rows])
                             if all("recipe_test_error" in r for r in rows) else None)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not an ablation table ({type(e).__name__}: {e})") from None


def _check_channels(channels, n_maps, layer):
    if channels is None:
        return None
    if isinstance(channels, (bool, np.bool_)):
        raise TypeError("channels must be an int, a list of ints or None, got a bool")
    if isinstance(channels, Integral):
        channels = [channels]
    if isinstance(channels, torch.Tensor):
        channels = channels.tolist()
    if not isinstance(channels, (list, tuple, range, np.ndarray)):
        raise TypeError(f"channels must be an int, a list of ints or None; got {type(channels).__name__}")
    out = []
    for c in channels:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, Integral):
            raise TypeError(f"channels must be ints, got {c!r}")
        if not 0 <= int(c) < n_maps:
            raise ValueError(f"channel {c} is out of range: layer {layer!r} has {n_maps} channels (0..{n_maps - 1})")
        out.append(int(c))
    if not out:
        raise ValueError("channels is empty; give None for all channels")
    return sorted(set(out))


def _predict_all(lens, data, batch_size, hook_module=None, hook=None, capture=None, desc="lesion",
                 show_progress=True):
    """Predicted classes over all images; optional forward hook (removed in finally) and output capture."""
    from ..core.capture import ModelGuard
    preds, probs = [], []
    handles = []
    try:
        if hook is not None:
            handles.append(hook_module.register_forward_hook(hook))
        if capture is not None:
            handles.append(hook_module.register_forward_hook(capture))
        with torch.no_grad(), ModelGuard(lens.model):
            for _, x in data.batches(batch_size, progress=show_progress, desc=desc):
                logits = lens.class_scores(lens.model(x))
                preds.append(logits.argmax(1).cpu())
                probs.append(logits.float().softmax(1).cpu())
    finally:
        for h in handles:
            h.remove()
    return torch.cat(preds), torch.cat(probs)


def _lesion_one(lens, data, y, layer, channels, mode, batch_size, before, show_progress):
    name, path, module = lens.resolve(layer)
    stats = {}

    def sizes(module_, args, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
        stats["shape"] = tuple(output.shape[1:])
        stats["in_shape"] = tuple(args[0].shape[1:]) if args and isinstance(args[0], torch.Tensor) else None
        raise _Probe  # the shapes are known: no need to run the rest of the model

    # the layer's shapes from one forward of the first image
    first = next(iter(data.batches(1)))[1][:1]
    h = module.register_forward_hook(sizes)
    try:
        from ..core.capture import ModelGuard
        with torch.no_grad(), ModelGuard(lens.model):
            try:
                lens.model(first)
            except _Probe:
                pass
    finally:
        h.remove()
    if "shape" not in stats:
        raise ValueError(f"layer {name!r} did not run during the forward")
    shape = stats["shape"]
    if len(shape) == 0:
        raise ValueError(f"layer {name!r} has no channel dimension (output shape {shape})")
    chans = _check_channels(channels, shape[0], name)
    if mode == "skip":
        if chans is not None:
            raise ValueError("mode='skip' bypasses the whole layer; leave channels=None")
        if stats["in_shape"] != shape:
            raise ValueError(f"cannot skip {name!r}: its input {stats['in_shape']} and output {shape} differ in shape")

    if before is None:
        before = _predict_all(lens, data, batch_size, desc="accuracy", show_progress=show_progress)
    before, p_before = before
    if mode == "mean":
        acc = {"sum": None, "n": 0}

        def collect(module_, args, output):
            s = output.detach().double().sum(0)
            acc["sum"] = s if acc["sum"] is None else acc["sum"] + s
            acc["n"] += output.shape[0]
        _predict_all(lens, data, batch_size, module, capture=collect, desc="channel means", show_progress=show_progress)
        mean = acc["sum"] / acc["n"]

    idx = None if chans is None else torch.tensor(chans)

    def knock_out(module_, args, output):
        if mode == "skip":
            return args[0]
        out = output.clone()
        sel = slice(None) if idx is None else idx.to(out.device)
        if mode == "zero":
            out[:, sel] = 0
        else:
            out[:, sel] = mean[sel].to(out.dtype).to(out.device)
        return out

    after, p_after = _predict_all(lens, data, batch_size, module, hook=knock_out, desc=f"lesion {name}",
                                  show_progress=show_progress)
    acc_b = float((before == y).double().mean())
    acc_a = float((after == y).double().mean())
    return Lesion(name, chans, mode, len(y), acc_b, acc_a, before.numpy(), after.numpy(), p_before.numpy(),
                  p_after.numpy(), y.numpy()), (before, p_before)


class _Probe(Exception):
    pass


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")


def lesion(lens, images, labels=None, layer=None, channels=None, *, mode: str = "zero",
           batch_size: int = DEFAULT_BATCH_SIZE, progress=True, show_progress=None) -> Lesion:
    """Accuracy before and after knocking out channels of ``layer``, without retraining.

    Args:
        lens: a :class:`zfwidgets.Lens`.
        images: labelled images (a list of images/samples, a uint8 array N x H x W [x C], or a float tensor
            N x C x H x W of model input).
        labels: one class index per image; ``None``: the labels the data carries (samples, pairs, a
            ``Dataset``/``DataLoader`` of pairs).
        layer: the layer (friendly name, dotted path or module); its output is changed.
        channels: channel indices (an int or a list), or ``None`` for all.
        mode: ``"zero"``, ``"mean"`` (the channel's mean over ``images``, per position) or ``"skip"`` (the
            layer passes its input through; input and output shapes must match).
        batch_size: images per forward.

    Example:
        >>> x, y = zfwidgets.zoo.data.load_fashion_mnist("test")
        >>> r = lesion(zfwidgets.load("zfnet-fashion"), x[:1000], y[:1000], "conv5", channels=range(32))
        >>> f"{r.accuracy_before:.1%} -> {r.accuracy_after:.1%}"
        '93.7% -> 89.8%'
    """
    show_progress = progress_flag(progress, show_progress)
    check_lens(lens)
    _check_mode(mode)
    if layer is None:
        raise TypeError("lesion() needs the layer to change: lesion(lens, images, labels, layer=...)")
    data = gather(lens, images, labels)
    y = data.require_labels("lesion")
    result, _ = _lesion_one(lens, data, y, layer, channels, mode, batch_size, None, show_progress)
    return result


def lesion_sweep(lens, images, labels=None, layers=None, *, fraction: float = 0.5, mode: str = "zero",
                 seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE, progress=True, show_progress=None) -> LesionSweep:
    """:func:`lesion` of every layer (default: all layers of the table but the output layer).

    For ``mode`` ``"zero"``/``"mean"`` a random ``fraction`` of each layer's channels (seeded; ``1.0``: all)
    is knocked out; ``"skip"`` bypasses each layer whose input and output shapes match (NaN elsewhere).

    Example:
        >>> sweep = lesion_sweep(lens, images, labels, fraction=0.5, progress=False)
        >>> sweep.layers[:3]
        ['conv1', 'conv2', 'conv3']
        >>> fig = sweep.plot()
    """
    show_progress = progress_flag(progress, show_progress)
    check_lens(lens)
    _check_mode(mode)
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    data = gather(lens, images, labels)
    y = data.require_labels("lesion_sweep")
    names = lens.layers[:-1] if layers is None else [lens.resolve(l)[0] for l in (
        [layers] if isinstance(layers, (str, torch.nn.Module)) else layers)]
    if not names:
        raise ValueError("no layers to lesion")
    rng = np.random.default_rng(seed)
    before = None
    lesions = []
    for name in names:
        module = lens.resolve(name)[2]
        n_maps = _out_channels(module)
        if mode == "skip":
            chans = None
        elif fraction >= 1 or n_maps is None:
            chans = None
        else:
            k = max(1, int(round(fraction * n_maps)))
            chans = sorted(int(c) for c in rng.choice(n_maps, size=k, replace=False))
        try:
            res, before = _lesion_one(lens, data, y, name, chans, mode, batch_size, before, show_progress)
        except ValueError as e:
            if mode != "skip" or "cannot skip" not in str(e):
                raise
            acc_b = float((before[0] == y).double().mean()) if before is not None else np.nan
            res = Lesion(name, None, mode, len(y), acc_b, float("nan"), np.array([]), np.array([]))
        lesions.append(res)
    if before is None:
        before = _predict_all(lens, data, batch_size, desc="accuracy", show_progress=show_progress)
    acc = float((before[0] == y).double().mean())
    for l in lesions:
        l.accuracy_before = acc
    return LesionSweep(lens.name, acc, lesions, len(y))


def _out_channels(module):
    for attr in ("out_channels", "out_features", "num_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return None
