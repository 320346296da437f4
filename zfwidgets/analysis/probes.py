"""Linear probes per layer (ZF §5.3, Table 7) and feature generalisation (ZF §5.2, Tables 4-6).

**The linear classifier** (both functions): multinomial logistic regression (softmax) on frozen features,
fitted full-batch with L-BFGS (strong-Wolfe line search, at most ``max_iter`` iterations) in float64 on
features standardised with the training set's mean and standard deviation. The objective is the mean
cross-entropy plus ``l2 / 2 * ||W||^2`` (default ``l2 = 0.01``, the same for every layer; the bias is not
penalised): the same model as scikit-learn's ``LogisticRegression(C=1 / (l2 * n_train))``. It is
deterministic.

**Features of a layer**: the layer's output, rectified (``relu``; the model's output layer is left as
is), flattened. A conv map larger than ``grid x grid`` is first average-pooled to ``grid x grid``
(``adaptive_avg_pool2d``; default 4), so that every layer gives a few hundred to a few thousand
features; ``grid=None`` keeps the full maps.

:func:`feature_generalisation` keeps a trained model's layers fixed and fits a new softmax on the
features of N examples per class of a second data set (default: scikit-learn's handwritten digits
upsampled to 28x28, :func:`zfwidgets.zoo.data.load_digits28`), and compares with the same architecture
trained from scratch on those N per class (Adam, batches of 64, until the training loss is below
``0.05`` or ``scratch_steps`` steps, no augmentation for either side), test accuracy on the held-out
digits. Both see the images through the lens's own preprocessing.

Example:
    >>> from zfwidgets.zoo.data import load_fashion_mnist
    >>> x_train, y_train = load_fashion_mnist("train")        # the notebooks use 2,000 and 1,000 images
    >>> p = zfwidgets.layer_probes(lens, x_train[:200], y_train[:200], images, labels, ["conv1", "fc7"],
    ...                            progress=False)
    >>> p.test_accuracy.tolist()                               # accuracy per layer, like ZF Table 7
    [0.8, 0.9]
    >>> g = zfwidgets.feature_generalisation(lens, n_per_class=(5,), scratch_steps=20, progress=False)
    >>> g.frozen_accuracy > g.scratch_accuracy                  # ZF Tables 4-6 at small scale
    array([[ True]])
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._progress import progress as _progress
from ..core.inputs import DEFAULT_BATCH_SIZE, Inputs, gather
from ._common import check_lens, last_hidden_layer, progress_flag, run_layers

__all__ = ["LayerProbes", "Generalisation", "layer_probes", "feature_generalisation", "fit_softmax",
           "layer_features"]


# ----- the linear classifier --------------------------------------------------------------------
@dataclass
class SoftmaxClassifier:
    """A fitted softmax regression: ``predict(features)`` gives classes (features as given to :func:`fit_softmax`)."""
    weight: torch.Tensor   # K x D (on standardised features)
    bias: torch.Tensor     # K
    mean: torch.Tensor     # D
    scale: torch.Tensor    # D
    iterations: int

    def logits(self, features) -> torch.Tensor:
        z = (torch.as_tensor(features).double() - self.mean) / self.scale
        return z @ self.weight.T + self.bias

    def predict(self, features) -> torch.Tensor:
        return self.logits(features).argmax(1)

    def accuracy(self, features, labels) -> float:
        return float((self.predict(features) == torch.as_tensor(labels)).double().mean())


def fit_softmax(features, labels, n_classes: int | None = None, *, l2: float = 1e-2,
                max_iter: int = 300) -> SoftmaxClassifier:
    """Multinomial logistic regression, full-batch L-BFGS (see the module docstring for the objective).

    Example:
        >>> features = torch.tensor([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]])
        >>> clf = fit_softmax(features, [0, 0, 1, 1], l2=1e-2)
        >>> clf.accuracy(features, [0, 0, 1, 1]), clf.predict(torch.tensor([[0.2, 0.8]]))
        (1.0, tensor([0]))
    """
    X = torch.as_tensor(features).detach().double().cpu()
    y = torch.as_tensor(labels).detach().long().cpu()
    if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(f"expected features n x D and n labels, got {tuple(X.shape)} and {tuple(y.shape)}")
    if isinstance(l2, bool) or not isinstance(l2, Real) or not l2 >= 0:
        raise ValueError(f"l2 must be a number >= 0, got {l2!r}")
    K = int(y.max()) + 1 if n_classes is None else int(n_classes)
    if int(y.min()) < 0 or int(y.max()) >= K:
        raise ValueError(f"labels must lie in 0..{K - 1}")
    mean = X.mean(0)
    scale = X.std(0, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    Z = (X - mean) / scale
    W = torch.zeros(K, Z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)
    count = [0]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(Z @ W.T + b, y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        count[0] += 1
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return SoftmaxClassifier(W.detach(), b.detach(), mean, scale, count[0])


# ----- features ---------------------------------------------------------------------------------
def _check_grid(grid):
    if grid is None:
        return None
    if isinstance(grid, bool) or not isinstance(grid, Integral) or grid < 1:
        raise ValueError(f"grid must be a positive int or None, got {grid!r}")
    return int(grid)


def layer_features(lens, images, layers, *, grid: int | None = 4, rectify: bool = True,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   progress=True, show_progress=None, desc: str = "features") -> dict:
    """``{layer name: N x D float32 tensor}``: each layer's (rectified, pooled, flattened) features.

    See the module docstring for the rectification and the ``grid`` pooling.

    Example:
        >>> f = layer_features(lens, images[:10], ["conv2", "fc7"], progress=False)
        >>> f["conv2"].shape, f["fc7"].shape       # conv maps pooled to 4 x 4: 64 * 4 * 4
        (torch.Size([10, 1024]), torch.Size([10, 256]))
    """
    show_progress = progress_flag(progress, show_progress)
    check_lens(lens)
    grid = _check_grid(grid)
    names = [lens.resolve(l)[0] for l in layers]
    output_layer = lens.layers[-1]
    data = images if isinstance(images, Inputs) else gather(lens, images)
    out = {l: [] for l in names}
    for _, x in data.batches(batch_size, progress=show_progress, desc=desc):
        _, acts = run_layers(lens, x, names)
        for l in names:
            a = acts[l].float()
            if rectify and l != output_layer:
                a = a.clamp(min=0)
            if grid is not None and a.dim() == 4 and (a.shape[2] > grid or a.shape[3] > grid):
                a = F.adaptive_avg_pool2d(a, grid)
            out[l].append(a.flatten(1).cpu().clone())
    return {l: torch.cat(v) for l, v in out.items()}


# ----- layer probes -----------------------------------------------------------------------------
@dataclass
class LayerProbes:
    """Linear-probe accuracy per layer (see :func:`layer_probes`)."""
    model: str
    layers: list
    test_accuracy: np.ndarray
    train_accuracy: np.ndarray
    feature_dim: np.ndarray
    n_train: int
    n_test: int
    grid: int | None
    l2: float
    test_predictions: list | None = None   # per layer: the probe's class for every test image
    test_labels: np.ndarray | None = None

    def confusion(self, layer) -> np.ndarray:
        """K x K counts of the probe on ``layer`` over the test images: row = true class, column = predicted.

        Example:
            >>> p = zfwidgets.layer_probes(lens, images, labels, images, labels, ["conv1"], progress=False)
            >>> int(p.confusion("conv1").sum()) == p.n_test
            True
        """
        if self.test_predictions is None:
            raise ValueError("these probes kept no test predictions")
        k = self.layers.index(layer) if isinstance(layer, str) else int(layer)
        pred = np.asarray(self.test_predictions[k])
        K = int(max(pred.max(), self.test_labels.max())) + 1
        return np.bincount(self.test_labels * K + pred, minlength=K * K).reshape(K, K)

    def table(self) -> str:
        """Text like ZF Table 7: one line per layer."""
        lines = [f"{'layer':<8} {'features':>8}  {'train':>7}  {'test':>7}"]
        for l, d, tr, te in zip(self.layers, self.feature_dim, self.train_accuracy, self.test_accuracy):
            lines.append(f"{l:<8} {d:>8}  {tr:>7.1%}  {te:>7.1%}")
        pool = f"maps average-pooled to {self.grid}x{self.grid}" if self.grid else "full maps"
        return "\n".join(lines) + (f"\n({self.model}; softmax on frozen features, l2={self.l2:g}, {pool}; "
                                   f"{self.n_train} train / {self.n_test} test images)")

    def __str__(self):
        return self.table()

    def plot(self):
        """Test (and train) accuracy of the linear probe against depth."""
        from ..plot.probes import plot_layer_probes
        return plot_layer_probes(self)


def layer_probes(lens, train_images, train_labels=None, test_images=None, test_labels=None, layers=None, *,
                 grid: int | None = 4, l2: float = 1e-2, max_iter: int = 300, batch_size: int = DEFAULT_BATCH_SIZE,
                 progress=True, show_progress=None) -> LayerProbes:
    """A linear softmax classifier on each layer's frozen features: accuracy per layer (ZF Table 7).

    Args:
        lens: a :class:`zfwidgets.Lens`.
        train_images, train_labels: images to fit the probes (any collection
            :func:`~zfwidgets.core.inputs.gather` accepts: a list, a uint8 array N x H x W [x C], a float
            tensor N x C x H x W of model input, a ``Dataset`` or ``DataLoader``) and their class indices
            (``None``: the labels the data carries).
        test_images, test_labels: held-out images and labels to measure them.
        layers: layers to probe (default: every layer of the table but the output layer).
        grid: conv maps are average-pooled to ``grid x grid`` (``None``: no pooling).
        l2: weight decay of the softmax (see the module docstring); ``max_iter``: L-BFGS iterations.

    Example:
        >>> from zfwidgets.zoo.data import load_fashion_mnist
        >>> xtr, ytr = load_fashion_mnist("train"); xte, yte = load_fashion_mnist("test")
        >>> p = layer_probes(zfwidgets.load(), xtr[:200], ytr[:200], xte[:100], yte[:100], ["conv3", "fc7"],
        ...                  progress=False)
        >>> p.layers
        ['conv3', 'fc7']
    """
    show_progress = progress_flag(progress, show_progress)
    check_lens(lens)
    if test_images is None:
        raise TypeError("layer_probes needs test images: layer_probes(lens, train_images, train_labels, "
                        "test_images, test_labels)")
    tr = gather(lens, train_images, train_labels, what="train_images", min_images=2)
    te = gather(lens, test_images, test_labels, what="test_images")
    ytr, yte = tr.require_labels("layer_probes (training images)"), te.require_labels("layer_probes (test images)")
    names = lens.layers[:-1] if layers is None else [lens.resolve(l)[0] for l in (
        [layers] if isinstance(layers, (str, nn.Module)) else layers)]
    if not names:
        raise ValueError("no layers to probe")
    K = int(max(ytr.max(), yte.max())) + 1
    ftr = layer_features(lens, tr, names, grid=grid, batch_size=batch_size, show_progress=show_progress,
                         desc="train features")
    fte = layer_features(lens, te, names, grid=grid, batch_size=batch_size, show_progress=show_progress,
                         desc="test features")
    acc_te, acc_tr, dims, preds = [], [], [], []
    for l in _progress(names, total=len(names), desc="probes", enabled=show_progress):
        clf = fit_softmax(ftr[l], ytr, K, l2=l2, max_iter=max_iter)
        acc_tr.append(clf.accuracy(ftr[l], ytr))
        acc_te.append(clf.accuracy(fte[l], yte))
        preds.append(clf.predict(fte[l]).numpy())
        dims.append(ftr[l].shape[1])
    return LayerProbes(lens.name, names, np.array(acc_te), np.array(acc_tr), np.array(dims), len(ytr), len(yte),
                       _check_grid(grid), float(l2), preds, yte.numpy())


# ----- feature generalisation -------------------------------------------------------------------
@dataclass
class Generalisation:
    """Frozen features + new softmax vs the same architecture trained from scratch, per N per class.

    ``frozen_accuracy`` and ``scratch_accuracy`` are ``repeats x len(n_per_class)`` test accuracies;
    ``scratch_train_accuracy`` and ``scratch_train_loss`` show that the scratch nets fitted their small
    training sets (every draw converges with the recipe of :func:`feature_generalisation`).

    The frozen column is a float64 fit on features of the fixed model: it reproduces on any CPU. The scratch
    column trains a network in float32 for a hundred steps, and the kernels of another CPU (AVX2 against
    AVX-512, another thread count) round differently: its per-draw accuracies move by a point or two from one
    machine to the next, its means by about one. Read it at that precision.
    """
    model: str
    layer: str
    n_per_class: np.ndarray
    frozen_accuracy: np.ndarray
    scratch_accuracy: np.ndarray
    scratch_train_accuracy: np.ndarray
    scratch_steps: np.ndarray
    scratch_train_loss: np.ndarray
    n_test: int
    n_classes: int
    dataset: str
    train_indices: list  # [repeat][k]: the indices (into the training pool) of the N-per-class draw

    def table(self) -> str:
        """Text like ZF Tables 4-6: one line per N (mean +- std over repeats when repeats > 1)."""
        def cell(a):
            return f"{a.mean():.1%}" + (f" ± {a.std():.1%}" if len(a) > 1 else "")
        lines = [f"{'N/class':>7}  {'frozen ' + self.layer + ' + softmax':>24}  {'from scratch':>16}"]
        for k, n in enumerate(self.n_per_class):
            lines.append(f"{n:>7}  {cell(self.frozen_accuracy[:, k]):>24}  {cell(self.scratch_accuracy[:, k]):>16}")
        return "\n".join(lines) + f"\n({self.model} on {self.dataset}: {self.n_classes} classes, {self.n_test} test images)"

    def __str__(self):
        return self.table()

    def plot(self):
        """Test accuracy against N per class: frozen features vs from scratch (ZF Tables 4-6)."""
        from ..plot.probes import plot_generalisation
        return plot_generalisation(self)


def _fresh_model(lens, seed):
    """The lens's architecture with a new random initialisation, as it is trained from scratch.

    A bundled model is rebuilt (``build(arch)``) with a BatchNorm after every convolution, the recipe its
    shipped weights were trained with (it only helps the optimiser: a few images per class then converge on
    every draw); any other model is a copy with every module's ``reset_parameters`` (and its own batch norms).
    """
    from ..zoo.models import ARCHITECTURES, build
    from ..zoo.train import with_batchnorm
    torch.manual_seed(seed)
    base = lens.name.split("@")[0]
    if base in ARCHITECTURES:
        return with_batchnorm(build(base))
    model = copy.deepcopy(lens.model)
    for m in model.modules():
        # a copy of the user's model must not run the user's hooks
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks):
            hooks.clear()
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _train_scratch(model, x, y, *, steps, lr, batch, seed, scores=lambda out: out):
    """Adam (weight decay 5e-4) for exactly ``steps`` steps of ``batch`` images, the learning rate on a cosine
    from ``lr`` to 0 and the gradient norm clipped at 1: a fixed recipe, with no stopping rule that a
    rounding difference could move. ``scores``: the model's output to class scores (the lens's output selector).
    Returns the final training loss and accuracy (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    n = x.shape[0]
    done = 0
    with torch.enable_grad():
        model.train()
        while done < steps:
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch):
                for group in opt.param_groups:
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * done / steps))
                idx = perm[i:i + batch]
                loss = F.cross_entropy(scores(model(x[idx])), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                done += 1
                if done >= steps:
                    break
    model.eval()
    with torch.no_grad():
        out = scores(model(x))
        return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def feature_generalisation(lens, n_per_class=(5, 10, 20), *, layer=None, data=None, repeats: int = 1, seed: int = 0,
                           scratch: bool = True, scratch_steps: int = 100, scratch_lr: float = 3e-3,
                           grid: int | None = 4, l2: float = 1e-2, batch_size: int = DEFAULT_BATCH_SIZE,
                           progress=True, show_progress=None) -> Generalisation:
    """Frozen features + a new softmax vs training from scratch, with N examples per class (ZF §5.2).

    Args:
        lens: a :class:`zfwidgets.Lens` on a trained model (its layers stay fixed).
        n_per_class: the N values (each <= the smallest class of the training pool).
        layer: the frozen features (default: the last hidden layer, ZF's fc7).
        data: the second data set, ``(train, test)`` (collections that carry their labels) or
            ``(x_train, y_train, x_test, y_test)``; default :func:`~zfwidgets.zoo.data.load_digits28`
            ``(seed)``. N per class are drawn from the training part, accuracy is measured on the whole test
            part.
        repeats: draws of the N per class (seeded by ``seed + repeat``).
        scratch: also train the architecture from scratch on each draw (a bundled model: ``build(arch)`` with
            a BatchNorm after each convolution, as its shipped weights were trained; otherwise a copy of the
            model with every module's ``reset_parameters``): Adam for exactly ``scratch_steps`` steps of 64
            images, learning rate ``scratch_lr`` on a cosine to 0, gradient norm clipped at 1.
        grid, l2: as in :func:`layer_probes`.

    Example:
        >>> g = feature_generalisation(zfwidgets.load("zfnet-fashion"), n_per_class=(5, 10), scratch=False,
        ...                            progress=False)
        >>> g.n_per_class, len(g.frozen_accuracy)
        (array([ 5, 10]), 1)
        >>> fig = g.plot()
    """
    show_progress = progress_flag(progress, show_progress)
    from ..zoo.data import load_digits28
    check_lens(lens)
    if isinstance(n_per_class, Integral) and not isinstance(n_per_class, bool):
        n_per_class = (n_per_class,)
    try:
        ns = [int(v) for v in n_per_class if not isinstance(v, bool) and isinstance(v, Integral)]
    except TypeError:
        raise TypeError(f"n_per_class must be an int or a sequence of ints, got {n_per_class!r}") from None
    if len(ns) != len(list(n_per_class)) or not ns:
        raise TypeError(f"n_per_class must be an int or a non-empty sequence of ints, got {n_per_class!r}")
    if min(ns) < 1:
        raise ValueError(f"n_per_class must be >= 1, got {ns}")
    for name, v, lo in (("repeats", repeats, 1), ("scratch_steps", scratch_steps, 1)):
        if isinstance(v, bool) or not isinstance(v, Integral) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if data is None:
        xtr, ytr, xte, yte = load_digits28(seed=int(seed))
        dataset = "digits (scikit-learn, 28x28)"
    else:
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 4):
            raise TypeError("data must be (train, test) or (x_train, y_train, x_test, y_test)")
        xtr, ytr, xte, yte = data if len(data) == 4 else (data[0], None, data[1], None)
        dataset = "the given data"
    tr = gather(lens, xtr, ytr, what="the training part of data")
    te = gather(lens, xte, yte, what="the test part of data")
    ytr = tr.require_labels("feature_generalisation (training part)")
    yte = te.require_labels("feature_generalisation (test part)")
    K = int(max(ytr.max(), yte.max())) + 1
    counts = np.bincount(ytr.numpy(), minlength=K)
    if max(ns) > counts.min():
        raise ValueError(f"n_per_class {max(ns)} is more than the smallest class of the training data "
                         f"({counts.min()} images)")
    layer = last_hidden_layer(lens) if layer is None else lens.resolve(layer)[0]
    ftr = layer_features(lens, tr, [layer], grid=grid, batch_size=batch_size, show_progress=show_progress,
                         desc="train features")[layer]
    fte = layer_features(lens, te, [layer], grid=grid, batch_size=batch_size, show_progress=show_progress,
                         desc="test features")[layer]
    if scratch:  # model input for the scratch nets: the same preprocessing as the frozen model
        xin_tr, xin_te = tr.tensor(), te.tensor()
    frozen = np.zeros((repeats, len(ns)))
    scr = np.full((repeats, len(ns)), np.nan)
    scr_train = np.full((repeats, len(ns)), np.nan)
    scr_loss = np.full((repeats, len(ns)), np.nan)
    scr_steps = np.zeros((repeats, len(ns)), np.int64)
    jobs = [(r, k) for r in range(repeats) for k in range(len(ns))]
    drawn = [[None] * len(ns) for _ in range(repeats)]
    y_np = ytr.numpy()
    for r, k in _progress(jobs, total=len(jobs), desc="generalisation", enabled=show_progress):
        rng = np.random.default_rng(int(seed) + r)
        idx = np.concatenate([rng.choice(np.flatnonzero(y_np == c), size=ns[k], replace=False) for c in range(K)])
        idx = torch.from_numpy(np.sort(idx))
        drawn[r][k] = idx.numpy()
        dev_idx = idx.to(lens.device)
        clf = fit_softmax(ftr[idx], ytr[idx], K, l2=l2)
        frozen[r, k] = clf.accuracy(fte, yte)
        if scratch:
            with torch.random.fork_rng(devices=[]):
                model = _fresh_model(lens, int(seed) * 1000 + r * 100 + k).to(lens.device)
                loss, acc_tr = _train_scratch(model, xin_tr[dev_idx], ytr[idx].to(lens.device), steps=scratch_steps,
                                              lr=scratch_lr, batch=64, seed=int(seed) + r,
                                              scores=lens.class_scores)
            with torch.no_grad():
                pred = torch.cat([lens.class_scores(model(xin_te[i:i + batch_size])).argmax(1)
                                  for i in range(0, len(yte), batch_size)])
            scr[r, k] = float((pred.cpu() == yte).double().mean())
            scr_train[r, k] = acc_tr
            scr_loss[r, k] = loss
            scr_steps[r, k] = scratch_steps
    return Generalisation(lens.name, layer, np.array(ns), frozen, scr, scr_train, scr_steps, scr_loss, len(yte), K,
                          dataset, drawn)


