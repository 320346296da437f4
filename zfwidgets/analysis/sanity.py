"""What a projection depends on: model randomisation and unit selectivity (METHODS.md §13).

- :func:`randomize`: a new lens over a copy of the model with some layers re-initialised (the user's model and
  lens are left as they were).
- :func:`sanity_check`: Adebayo et al.'s model randomisation test (*Sanity Checks for Saliency Maps*, NeurIPS
  2018). The trained model's layers are re-initialised from the top down, cumulatively (``"cascade:<layer>"``:
  that layer and every layer above it), and one at a time (``"independent:<layer>"``), and each method's
  projection of the same unit is compared with the trained model's. Their finding: guided backprop's maps
  barely change under cascading randomisation; the gradient's do.
- :func:`selectivity`: Mahendran & Vedaldi (ECCV 2016) and Nie, Zhang & Patel (ICML 2018): how alike the
  projections of *different* units (channels at their strongest units, or classes) are on one image. A method
  that draws the image whatever the unit scores near 1.

How two projections are compared (:func:`similarities`; each projection is C x H x W):

- ``"spearman_abs"``: Spearman rank correlation (``scipy.stats.spearmanr``) of the heat maps
  ``sum_c |x_c|`` (H x W, flattened);
- ``"spearman"``: Spearman rank correlation of the signed maps ``sum_c x_c``;
- ``"ssim"``: SSIM (``skimage.metrics.structural_similarity``, ``data_range=1``) of the heat maps, each
  divided by its maximum (so in [0, 1]);
- ``"hog"``: Pearson correlation of the HOG features (``skimage.feature.hog``: 9 orientations, cells of
  ``min(8, H // 4, W // 4)`` pixels, 2 x 2 cells a block) of those [0, 1] heat maps: Adebayo et al.'s "Pearson
  correlation of the histogram of gradients".

A pair where either projection is all zeros (no picture: a unit that does not fire, a dead network) gets NaN in
every metric; means over images leave NaN out (``NaN`` when every image is NaN).

Example:
    >>> imgs = [s.image for s in zfwidgets.samples()[:2]]
    >>> sc = sanity_check(lens, imgs, methods=("guided", "gradient"), steps=["cascade:fc8", "cascade:conv1"],
    ...                   progress=False)
    >>> sc.steps
    ['none', 'cascade:fc8', 'cascade:conv1']
    >>> round(sc.similarity("gradient", "none", "ssim"), 3)
    1.0
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
import torch

from .._progress import progress as _progress
from ..core.inputs import gather, is_single_image
from ..core.project import METHODS, project
from ..lens import Lens
from ._common import check_flag, check_int, check_lens

__all__ = ["randomize", "sanity_check", "data_randomization", "SanityCheck", "selectivity", "Selectivity",
           "similarities",
           "METRICS", "randomised_layers", "all_steps"]

METRICS = ("spearman_abs", "spearman", "ssim", "hog")
DEFAULT_METHODS = ("deconvnet", "guided", "gradient")


# ----- randomisation -----------------------------------------------------------------------------------
def _table_index(lens, path: str) -> int | None:
    """Index in the layer table of the entry that is or contains ``path``; None for a module outside them."""
    for k, info in enumerate(lens.table):
        if path == info.path or path.startswith(info.path + "."):
            return k
    return None


def _groups(lens, model) -> list[list[str]]:
    """For each layer of the table, the module paths it re-initialises: the layer itself and the modules with
    parameters that follow it, outside any layer of the table, up to the next one (a batch norm after its
    convolution), in the order the model defines them. Modules with parameters before the first layer go with
    the first."""
    table = {info.path: k for k, info in enumerate(lens.table)}
    groups = [[info.path] for info in lens.table]
    current, inside, loose_before = None, None, []
    for path, module in model.named_modules():
        if inside is not None and path.startswith(inside + "."):
            continue
        inside = None
        if path in table:
            current, inside = table[path], path
            continue
        if path and next(module.parameters(recurse=False), None) is not None:
            (loose_before if current is None else groups[current]).append(path)
    if groups:
        groups[0][1:1] = loose_before
    return groups


def _check_layers(lens, layer) -> dict:
    """``{path: name}`` of ``layer`` (one or a list), in the order given; ValueError naming the valid layers."""
    items = [layer] if isinstance(layer, (str, torch.nn.Module)) else layer
    if not isinstance(items, (list, tuple)) or not items:
        raise TypeError(f"layer must be a layer name, a module, or a non-empty list of them; got {layer!r}")
    out = {}
    for item in items:
        name, path, _ = lens.resolve(item)      # ValueError names the valid layers
        out.setdefault(path, name)
    return out


def randomised_layers(lens, layer, *, cascade: bool = True) -> list[str]:
    """The module paths :func:`randomize` re-initialises for ``layer`` (in forward order of the table).

    Example:
        >>> randomised_layers(lens, "fc7")
        ['fc7', 'fc8']
        >>> randomised_layers(lens, ["conv2", "fc6"], cascade=False)
        ['conv2', 'fc6']
    """
    check_lens(lens)
    paths = _check_layers(lens, layer)
    groups = _groups(lens, lens.model)
    table_paths = [info.path for info in lens.table]
    chosen: list[str] = []
    if cascade:
        idx = []
        for p in paths:
            if p not in table_paths:
                raise ValueError(f"layer {paths[p]!r} ({p}) is not one of the lens's layers {lens.layers}; "
                                 "a cascade runs over those (choose one of them, or pass cascade=False to "
                                 "re-initialise this module alone)")
            idx.append(table_paths.index(p))
        for g in groups[min(idx):]:
            chosen += g
    else:
        parts = []      # (place in the table, modules), put in the table's order
        for p in paths:
            k = _table_index(lens, p)
            parts.append((len(table_paths) if k is None else k, groups[k] if p in table_paths else [p]))
        for _, g in sorted(parts, key=lambda t: t[0]):
            chosen += g
    return list(dict.fromkeys(chosen))


def _reset(module, path: str) -> None:
    """``reset_parameters()`` of every submodule that has one; ValueError for parameters none of them covers."""
    uncovered = []
    for sub_path, sub in module.named_modules():
        if callable(getattr(sub, "reset_parameters", None)):
            sub.reset_parameters()
        else:
            uncovered += [f"{path}.{sub_path}.{n}".replace("..", ".") for n, _ in sub.named_parameters(recurse=False)]
    if uncovered:
        raise ValueError(f"parameters {uncovered[:4]}{' ...' if len(uncovered) > 4 else ''} belong to modules "
                         "without reset_parameters(): they cannot be re-initialised by their own rule")


def _layer_seed(seed: int, path: str) -> int:
    """One seed per layer, from ``seed`` and the layer's path: a layer gets the same new weights whether it
    is re-initialised alone or in a cascade."""
    return int(np.random.SeedSequence([seed, zlib.crc32(path.encode())]).generate_state(1, np.uint64)[0])


def randomize(lens, layer, *, cascade: bool = True, seed: int = 0):
    """A new :class:`~zfwidgets.Lens` over a copy of the model with ``layer`` re-initialised.

    Each re-initialised module gets its own ``reset_parameters()`` (PyTorch's default initialisation of that
    module; a batch norm's running statistics reset too). With ``cascade=True`` ``layer`` and every layer after
    it in the lens's layer table (up to the output) are re-initialised (Adebayo et al.'s cascading
    randomisation); with ``cascade=False`` only ``layer``. A list of layers re-initialises each of them
    (with ``cascade=True``: the cascade from the lowest). A layer of the table takes with it the modules with
    parameters that follow it up to the next layer of the table (its batch norm; see
    :func:`randomised_layers`).

    Each layer is re-initialised under its own seed, made from ``seed`` and the layer's path, so a layer gets
    the same new weights alone as in a cascade. The global random state is left as it was
    (``torch.random.fork_rng``), and so are the user's model and lens: the copy is a ``copy.deepcopy``. The new
    lens has the same transform, class names, input size, mean and std, and a name that says what changed.

    Raises ``ValueError`` for an unknown layer (naming the valid ones) or parameters of a module without
    ``reset_parameters()``; the user's model is not touched.

    Example:
        >>> rlens = randomize(lens, "conv4")
        >>> rlens.name
        'zfnet-fashion (randomised from conv4)'
        >>> torch.equal(rlens.model.conv3.weight, lens.model.conv3.weight), \\
        ...     torch.equal(rlens.model.fc8.weight, lens.model.fc8.weight)
        (True, False)
    """
    check_lens(lens)
    if not isinstance(cascade, bool):
        raise TypeError(f"cascade must be True or False, got {cascade!r}")
    seed = check_int("seed", seed, minimum=0)
    paths = randomised_layers(lens, layer, cascade=cascade)
    model = copy.deepcopy(lens.model)
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        for path in paths:
            s = _layer_seed(seed, path)
            torch.default_generator.manual_seed(s)
            for d in devices:
                torch.cuda.default_generators[d].manual_seed(s)
            _reset(model.get_submodule(path), path)
    asked = _check_layers(lens, layer)
    if cascade:
        what = f"randomised from {asked[min(asked, key=paths.index)]}"
    else:
        what = f"{', '.join(asked.values())} randomised"
    return Lens(model, transform=lens.transform, class_names=lens.class_names, input_size=lens.input_size,
                mean=lens.mean, std=lens.std, output=lens.output, name=f"{lens.name} ({what})")


# ----- similarity of two projections ---------------------------------------------------------------------
def _maps(pixels):
    x = pixels.detach().double().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels, np.float64)
    if x.ndim == 4:
        x = x[0]
    if x.ndim == 2:
        x = x[None]
    heat = np.abs(x).sum(0)
    return heat, x.sum(0)


def _hog(unit_map):
    from skimage.feature import hog
    cell = max(1, min(8, unit_map.shape[0] // 4, unit_map.shape[1] // 4))
    return hog(unit_map, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2), feature_vector=True)


def _pearson(a, b) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def similarities(a, b) -> dict:
    """The four similarities of two projections (C x H x W tensors or arrays); see the module docstring.

    Example:
        >>> p = zfwidgets.project(lens, image, "fc8", method="guided").pixels
        >>> {k: round(v, 3) for k, v in similarities(p, 2 * p).items()}
        {'spearman_abs': 1.0, 'spearman': 1.0, 'ssim': 1.0, 'hog': 1.0}
    """
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity
    ha, sa = _maps(a)
    hb, sb = _maps(b)
    if ha.shape != hb.shape:
        raise ValueError(f"projections of different sizes: {ha.shape} and {hb.shape}")
    if not ha.any() or not hb.any():
        return {m: float("nan") for m in METRICS}
    out = {}
    out["spearman_abs"] = float(spearmanr(ha.ravel(), hb.ravel()).statistic) if ha.std() and hb.std() else float("nan")
    out["spearman"] = float(spearmanr(sa.ravel(), sb.ravel()).statistic) if sa.std() and sb.std() else float("nan")
    na, nb = ha / ha.max(), hb / hb.max()
    side = min(na.shape)
    win = min(7, side if side % 2 else side - 1)
    out["ssim"] = float(structural_similarity(na, nb, data_range=1.0, win_size=win))
    out["hog"] = _pearson(_hog(na), _hog(nb))
    return out


# ----- the model randomisation test ------------------------------------------------------------------
@dataclass
class SanityCheck:
    """Similarities between the trained and the randomised model's projections of the same unit.

    ``steps``: the step names in order (``"none"``, then ``"cascade:<layer>"`` from the top layer down, then
    ``"independent:<layer>"`` top down). ``values[method][step][metric]``: one value per image (NaN where either
    projection is all zeros). ``skipped``: steps left out because they re-initialise only layers above the
    unit's layer, which cannot change it (``note`` says so). ``units``: per image ``(channel, position)``
    projected (for the class score: the top class, position None). ``projections[method][step]``: the
    projections (C x H x W) of the first ``keep`` images; ``images``: those images for display (H x W x 3 uint8).
    """
    layer: str
    unit: str
    methods: list
    steps: list
    values: dict = field(repr=False)
    units: list = field(repr=False)
    skipped: list = field(default_factory=list)
    note: str = ""
    seed: int = 0
    projections: dict = field(default_factory=dict, repr=False)
    images: list = field(default_factory=list, repr=False)

    def _check(self, method, step, metric):
        if method not in self.methods:
            raise ValueError(f"method {method!r} was not measured; measured: {self.methods}")
        if step in self.skipped:
            raise ValueError(f"step {step!r} was left out: {self.note}")
        if step not in self.steps:
            raise ValueError(f"unknown step {step!r}; steps: {self.steps}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")

    def per_image(self, method: str, step: str, metric: str = "spearman_abs") -> np.ndarray:
        """The per-image similarities of one method, step and metric."""
        self._check(method, step, metric)
        return self.values[method][step][metric]

    def similarity(self, method: str, step: str, metric: str = "spearman_abs") -> float:
        """Mean over the images (NaN left out) of one method's similarity at ``step`` by ``metric``.

        Example:
            >>> sc = sanity_check(lens, images[:2], methods=("gradient",), steps=["cascade:fc8"], progress=False)
            >>> round(sc.similarity("gradient", "none", "spearman"), 3)
            1.0
        """
        v = self.per_image(method, step, metric)
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    def kind_steps(self, kind: str | None = None) -> tuple[str, list]:
        """``(kind, steps)``: ``"none"`` and the steps of ``kind`` in order: ``"cascade"``, ``"independent"`` or
        ``"labels"`` (the data randomisation test's); ``None``: ``"labels"`` for a :func:`data_randomization`
        result, else ``"cascade"``."""
        if kind is None:
            kind = "labels" if RANDOM_LABELS in self.steps else "cascade"
        if kind not in ("cascade", "independent", "labels"):
            raise ValueError(f"kind must be 'cascade', 'independent' or 'labels', got {kind!r}")
        return kind, [s for s in self.steps if s == "none" or s.startswith(kind + ":")
                      or (kind == "labels" and s == RANDOM_LABELS)]

    def curve(self, method: str, metric: str = "spearman_abs", kind: str | None = None) -> tuple[list, np.ndarray]:
        """``(steps, means)``: ``"none"`` and the steps of ``kind`` in order (see :meth:`kind_steps`)."""
        _, steps = self.kind_steps(kind)
        return steps, np.array([self.similarity(method, s, metric) for s in steps])

    def plot(self, *, kind: str | None = None, image: int = 0, figsize=None):
        """Adebayo et al.'s figure: methods x randomisation steps, and the similarity curves."""
        from ..plot.sanity import plot_sanity_check
        return plot_sanity_check(self, kind=kind, image=image, figsize=figsize)


def _check_methods(methods) -> list:
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    if not methods:
        raise ValueError("methods is empty")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {m!r}")
    return list(dict.fromkeys(methods))


def _inputs(lens, images) -> torch.Tensor:
    data = gather(lens, [images] if is_single_image(images) else images)
    return data.tensor()


def _project(lens, x, layer, channel, position, method) -> torch.Tensor:
    return project(lens, x, layer, channel, position=position, method=method).pixels.detach().cpu()


def all_steps(lens, layer=None) -> list[str]:
    """Every step :func:`sanity_check` can run on ``lens``, in order; with ``layer`` (the unit's layer, as
    :func:`sanity_check` takes it), only those that can change a unit of that layer: the steps that
    re-initialise only layers above it are the ones :func:`sanity_check` leaves out.

    Example:
        >>> all_steps(lens)[:3], len(all_steps(lens))
        (['none', 'cascade:fc8', 'cascade:fc7'], 17)
        >>> all_steps(lens, "fc6")[:3], len(all_steps(lens, "fc6"))
        (['none', 'cascade:fc6', 'cascade:conv5'], 13)
    """
    check_lens(lens)
    top_down = lens.layers[::-1]
    steps = ["none"] + [f"cascade:{n}" for n in top_down] + [f"independent:{n}" for n in top_down]
    if layer is None:
        return steps
    k = _table_index(lens, lens.resolve(layer)[1])
    above = set() if k is None else set(lens.layers[k + 1:])
    return [s for s in steps if s == "none" or s.split(":", 1)[1] not in above]


def sanity_check(lens, images, layer=None, methods=DEFAULT_METHODS, *, steps=None, seed: int = 0, keep: int = 1,
                 progress=True) -> SanityCheck:
    """Adebayo et al.'s model randomisation test: how much each method's projection changes when the model's
    weights are re-initialised (see the module docstring for the metrics).

    Args:
        lens: a :class:`zfwidgets.Lens`.
        images: a list of images (PIL, arrays, tensors, ``zfwidgets.samples()`` items) or N x C x H x W input.
        layer: the unit's layer. ``None`` (Adebayo's choice): the score of the trained model's top class on each
            image (the lens's last layer, which must be the class scores). A layer: its strongest unit on each
            image in the trained model (the channel and position :func:`~zfwidgets.project` picks), projected at
            the same channel and position in every randomised model. A unit at layer l can only change when
            layers at or below l are re-initialised: the steps that re-initialise only layers above it are left
            out, listed in ``skipped``.
        methods: among ``"deconvnet"``, ``"guided"``, ``"gradient"``.
        steps: the step names to run (see :func:`all_steps`); default all. ``"none"`` (the trained model
            against itself) always comes first.
        seed: the seed of :func:`randomize`.
        keep: how many images' projections to keep for the figure.
        progress: show a progress bar over the steps (``True``/``False`` or a callable ``f(done, total)``).

    Example:
        >>> sc = sanity_check(lens, images[:2], "conv3", methods=("guided",), steps=["cascade:fc8", "cascade:conv3"],
        ...                   progress=False)
        >>> sc.steps, sc.skipped
        (['none', 'cascade:conv3'], ['cascade:fc8'])
    """
    check_lens(lens)
    methods = _check_methods(methods)
    seed = check_int("seed", seed, minimum=0)
    keep = check_int("keep", keep, minimum=0)
    check_flag("progress", progress)
    possible = all_steps(lens)
    if steps is None:
        wanted = possible
    else:
        if isinstance(steps, str):
            steps = [steps]
        bad = [s for s in steps if s not in possible]
        if bad:
            raise ValueError(f"unknown steps {bad}; steps of this lens: {possible}")
        wanted = ["none"] + [s for s in possible[1:] if s in steps]
    x = _inputs(lens, images)
    N = x.shape[0]
    # the unit of each image, chosen on the trained model, and the trained projections
    name, path, units, trained = _trained_units(lens, x, layer, methods)
    unit = "class score of the trained model's top class" if layer is None else \
        f"strongest unit of {name} in the trained model"

    # steps that re-initialise only layers above the unit's layer cannot change it
    can_change = all_steps(lens, None if layer is None else path)
    skipped = [s for s in wanted if s not in can_change]
    run = [s for s in wanted if s not in skipped]
    note = (f"steps {skipped} re-initialise only layers above {name}, which cannot change a unit of {name}: "
            "left out") if skipped else ""

    def lens_of(s):
        kind, lname = s.split(":", 1)
        return randomize(lens, lname, cascade=kind == "cascade", seed=seed)
    values, projections = _compare_steps(lens, x, name, methods, units, trained, run, lens_of, keep, progress,
                                         "sanity check")
    shown = [lens.to_display(x[i]) for i in range(min(keep, N))]
    return SanityCheck(name, unit, methods, run, values, units, skipped, note, seed, projections, shown)


def _trained_units(lens, x, layer, methods):
    """``(name, path, units, trained projections)``: each image's unit on ``lens`` (the top class's score for
    ``layer=None``, else the layer's strongest unit) and its projection by every method."""
    last = lens.layers[-1]
    if layer is None:
        name, path = last, lens.resolve(last)[1]
    else:
        name, path, _ = lens.resolve(layer)
    units, trained = [], {m: [] for m in methods}
    for i in range(x.shape[0]):
        if layer is None:
            fwd = lens.forward(x[i])
            act = fwd.activations.get(path)
            if act is None or act.dim() != 2 or act.shape[1] != fwd.logits.shape[1]:
                raise ValueError(f"the lens's last layer {last!r} is not the class scores (output "
                                 f"{None if act is None else tuple(act.shape)}, logits {tuple(fwd.logits.shape)}); "
                                 "pass layer= to choose the unit's layer")
            channel, position = int(fwd.logits[0].argmax()), None
        else:
            p = project(lens, x[i], name, method=methods[0])
            channel, position = p.channel, p.position
        units.append((channel, position))
        for m in methods:
            trained[m].append(_project(lens, x[i], name, channel, position or "max", m))
    return name, path, units, trained


def _compare_steps(lens, x, name, methods, units, trained, run, lens_of, keep, progress, desc):
    """Per step (``"none"``: the model itself; any other: the lens ``lens_of(step)``), each method's projection
    of every image's unit compared with the trained one: ``(values, projections)`` as :class:`SanityCheck`
    holds them."""
    N = x.shape[0]
    values = {m: {s: {mt: np.full(N, np.nan) for mt in METRICS} for s in run} for m in methods}
    projections = {m: {} for m in methods}
    for s in _progress(run, total=len(run), desc=desc, enabled=progress):
        other = None if s == "none" else lens_of(s)
        for i in range(N):
            channel, position = units[i]
            for m in methods:
                q = trained[m][i] if other is None else _project(other, x[i], name, channel, position or "max", m)
                for mt, v in similarities(trained[m][i], q).items():
                    values[m][s][mt][i] = v
                if i < keep:
                    projections[m].setdefault(s, []).append(q)
        if other is not None:
            other.clear_cache()
    return values, projections


RANDOM_LABELS = "random labels"


def data_randomization(lens, other, images, layer=None, methods=DEFAULT_METHODS, *, keep: int = 1,
                       progress=True) -> SanityCheck:
    """Adebayo et al.'s data randomisation test: the same architecture trained on randomly permuted labels
    (``other``: a lens, or a bundled model's name such as ``"zfnet-fashion-randomlabels"``) against the model
    trained on the true ones (``lens``). The unit is chosen on ``lens`` as in :func:`sanity_check` (by default
    the score of its top class on each image) and projected by both; their similarities are step
    ``"random labels"`` of the result (``"none"`` is the model against itself). A method whose maps depend on
    what the model learned gives low similarities: a model that memorised noise has nothing to show.

    Example:
        >>> other = randomize(lens, "conv1")      # stands in here for zfwidgets.load("zfnet-fashion-randomlabels")
        >>> dr = data_randomization(lens, other, images[:2], methods=("gradient",), progress=False)
        >>> dr.steps
        ['none', 'random labels']
    """
    check_lens(lens)
    if isinstance(other, str):
        from ..zoo import load
        other = load(other)
    check_lens(other)
    methods = _check_methods(methods)
    keep = check_int("keep", keep, minimum=0)
    check_flag("progress", progress)
    if [i.path for i in other.table] != [i.path for i in lens.table] or other.input_size != lens.input_size:
        raise ValueError(f"the two lenses must be the same architecture: {lens.name} has layers {lens.layers} at "
                         f"input {lens.input_size}, {other.name} has {other.layers} at {other.input_size}")
    x = _inputs(lens, images)
    name, _, units, trained = _trained_units(lens, x, layer, methods)
    run = ["none", RANDOM_LABELS]
    values, projections = _compare_steps(lens, x, name, methods, units, trained, run, lambda s: other, keep,
                                         progress, "data randomisation")
    unit = "class score of the trained model's top class" if layer is None else \
        f"strongest unit of {name} in the trained model"
    shown = [lens.to_display(x[i]) for i in range(min(keep, x.shape[0]))]
    return SanityCheck(name, unit, methods, run, values, units, [], f"{RANDOM_LABELS}: {other.name}", 0,
                       projections, shown)


# ----- selectivity -------------------------------------------------------------------------------
@dataclass
class Selectivity:
    """Mean pairwise similarity between projections of different units of one layer on the same image.

    ``values[method][metric]``: one value per image, the mean over the pairs of its units (NaN left out).
    ``units``: per image the channels (or classes) compared, strongest first. ``projections[method]``: the
    first image's projections, one per unit.
    """
    layer: str
    methods: list
    values: dict = field(repr=False)
    units: list = field(repr=False)
    projections: dict = field(default_factory=dict, repr=False)

    def similarity(self, method: str, metric: str = "spearman_abs") -> float:
        """Mean over the images of the mean pairwise similarity (near 1: the picture hardly depends on the unit).

        Example:
            >>> sel = selectivity(lens, images[:1], "output", methods=("gradient",), n_units=3, progress=False)
            >>> -1 <= sel.similarity("gradient", "ssim") <= 1
            True
        """
        if method not in self.methods:
            raise ValueError(f"method {method!r} was not measured; measured: {self.methods}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        v = self.values[method][metric]
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def selectivity(lens, images, layer, *, methods=DEFAULT_METHODS, channels=None, n_units: int = 8,
                progress=True) -> Selectivity:
    """How alike the projections of different units of ``layer`` are on the same image.

    For each image the units are ``channels`` (a list of channel or class indices) or, by default, the
    ``n_units`` channels whose strongest activation on that image is largest; each channel is projected at its
    strongest position. ``layer="output"`` (or the lens's last layer) compares the scores of different classes
    (by default the ``n_units`` top-scoring classes). For each method the similarities of every pair of
    different units (the metrics of :func:`similarities`) are averaged per image.

    Example:
        >>> sel = selectivity(lens, images[:2], "conv5", methods=("deconvnet", "gradient"), n_units=4, progress=False)
        >>> len(sel.units[0]), sorted(sel.values["deconvnet"])
        (4, ['hog', 'spearman', 'spearman_abs', 'ssim'])
    """
    check_lens(lens)
    methods = _check_methods(methods)
    check_flag("progress", progress)
    n_units = check_int("n_units", n_units, minimum=2)
    if isinstance(layer, str) and layer == "output" and "output" not in lens.layers \
            and "output" not in dict(lens.model.named_modules()):
        layer = lens.layers[-1]
    name, path, _ = lens.resolve(layer)
    if channels is not None:
        if isinstance(channels, (Integral, str)) or len(channels) < 2:
            raise ValueError(f"channels must list at least two channels, got {channels!r}")
        channels = [check_int("channel", c, minimum=0) for c in channels]
    x = _inputs(lens, images)
    N = x.shape[0]
    values = {m: {mt: np.full(N, np.nan) for mt in METRICS} for m in methods}
    units, projections = [], {}
    for i in _progress(range(N), total=N, desc="selectivity", enabled=progress):
        act = lens.forward(x[i], extra_layers=(layer,)).activations[path].detach()
        strength = act[0].flatten(1).amax(1) if act.dim() == 4 else act[0]
        if channels is not None:
            if max(channels) >= strength.numel():
                raise ValueError(f"channel {max(channels)} is out of range: layer {name!r} has "
                                 f"{strength.numel()} channels")
            chosen = channels
        else:
            chosen = [int(c) for c in strength.argsort(descending=True)[:n_units]]
        units.append(chosen)
        for m in methods:
            maps = [_project(lens, x[i], name, c, "max", m) for c in chosen]
            if i == 0:
                projections[m] = maps
            pairs = [similarities(maps[a], maps[b]) for a in range(len(maps)) for b in range(a + 1, len(maps))]
            for mt in METRICS:
                v = np.array([p[mt] for p in pairs])
                values[m][mt][i] = np.nanmean(v) if np.isfinite(v).any() else np.nan
    return Selectivity(name, methods, values, units, projections)
