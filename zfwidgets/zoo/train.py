"""Train the bundled models on Fashion-MNIST, on the CPU, with a fixed seed.

Writes into ``--out`` (default: the package's ``zoo/weights`` folder):
  ``<arch>.pt``            final weights (state dict, float16; loaded with ``weights_only=True``)
  ``<arch>.epoch<k>.pt``   snapshots for the feature-evolution view
  ``<arch>.json``          the model card: seed, epochs, per-epoch train/test accuracy, commit, timings
With ``--ablation`` it trains ZF Table 3's variants instead (the recipe, then :data:`PLATEAU_CHECK`) and writes
``<arch>.ablation.json``.

Commands (each reproduces what ships; --recipe runs the bundled model's two stages, :data:`RECIPE`):
    python -m zfwidgets.zoo.train --arch zfnet-fashion --epochs 14 --dropout 0.3 --batchnorm --train-eval 10000
    python -m zfwidgets.zoo.train --arch zfnet-fashion --resume --epochs 3 --lr 3e-4 --no-augment \
        --dropout 0.1 --train-eval 10000
    python -m zfwidgets.zoo.train --arch allconv-fashion --epochs 14 --dropout 0.3 --batchnorm --train-eval 10000
    python -m zfwidgets.zoo.train --arch zfnet-fashion-coarse --recipe --threads 1
    python -m zfwidgets.zoo.train --arch zfnet-fashion-half --recipe --threads 1 --snapshots 1,2,3,4,6,8,12
    python -m zfwidgets.zoo.train --arch zfnet-fashion --ablation --threads 1 [--variants a,b --out DIR --keep DIR]
    python -m zfwidgets.zoo.train --arch zfnet-fashion-randomlabels --subset 4000 --epochs 80 --no-augment \
        --dropout 0 --batchnorm --snapshots none
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.geometry import fold_batchnorm as fold_conv_batchnorm
from .data import FASHION_CLASSES, FASHION_MEAN, FASHION_STD, keep_classes, load_fashion_mnist
from .models import ARCHITECTURES, HALF_CLASSES, SPECS, VARIANTS, build

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SNAPSHOT_EPOCHS = (1, 2, 4, 8)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        # tracked files only: the weights a run is writing are untracked until they are committed
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() / 255.0 - FASHION_MEAN) / FASHION_STD


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random shift by up to 2 px (zero-padded), on a uint8 batch N x 28 x 28."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None], x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()  # one shift per batch: cheap, still varied
    return padded[:, dy:dy + 28, dx:dx + 28]


@torch.inference_mode()
def accuracy(model, x_uint8: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x_uint8), batch):
        logits = model(normalise(x_uint8[i:i + batch])[:, None])
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    model.train(was)
    return correct / len(x_uint8)


def with_batchnorm(model: torch.nn.Sequential) -> torch.nn.Sequential:
    """A training copy of a bundled model with a BatchNorm2d after every convolution (``<name>_bn``).

    Used by ``--batchnorm``: batch normalisation only helps the optimiser. What ships is
    :func:`fold_batchnorm` of the trained copy: the plain ZF layout, each BatchNorm merged into its conv.
    """
    from collections import OrderedDict
    layers = OrderedDict()
    for name, m in model.named_children():
        layers[name] = m
        if isinstance(m, torch.nn.Conv2d):
            layers[f"{name}_bn"] = torch.nn.BatchNorm2d(m.out_channels)
    return torch.nn.Sequential(layers)


@torch.no_grad()
def fold_batchnorm(trained: torch.nn.Sequential, plain: torch.nn.Sequential) -> torch.nn.Sequential:
    """Load ``plain`` (the shipped layout) with ``trained``'s weights, each BatchNorm folded into its conv:
    ``W' = W * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta`` (exact in eval mode)."""
    mods = dict(trained.named_children())
    if not any(isinstance(m, torch.nn.BatchNorm2d) for m in mods.values()):
        plain.load_state_dict(trained.state_dict())
        return plain
    for name, target in plain.named_children():
        src = mods[name]
        if isinstance(target, torch.nn.Conv2d):
            weight, bias = fold_conv_batchnorm(src, mods[f"{name}_bn"])
            target.weight.copy_(weight)
            target.bias.copy_(bias)
        else:
            target.load_state_dict(src.state_dict())
    return plain


def _half_state(model) -> dict:
    return {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}


def _shipped(model, arch: str, variant: str):
    """The model as it ships: BatchNorm folded (if any), weights rounded to float16 and back, so the card
    reports what users load."""
    plain = fold_batchnorm(model, build(arch, variant))
    plain.load_state_dict({k: v.float() for k, v in _half_state(plain).items()})
    return plain.eval()


def _classes_of(arch: str):
    """The Fashion-MNIST classes an architecture is trained on, in the order of its outputs (None: all ten)."""
    return HALF_CLASSES if SPECS[arch]["classes"] == 5 else None


def train(arch: str, *, epochs: int, seed: int, variant: str = "base", batch_size: int = 128,
          lr: float = 2e-3, snapshots=SNAPSHOT_EPOCHS, out: Path | None = None, root=None,
          subset: int | None = None, train_eval: int | None = None, resume: bool = False,
          augment: bool = True, dropout: float | None = None, batchnorm: bool = False,
          channels_last: bool = False, log=print) -> dict:
    commit = _commit()  # the code this run trains from, read before anything else can change
    torch.manual_seed(seed)
    np.random.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    classes = _classes_of(arch)
    splits = [load_fashion_mnist(split, root) for split in ("train", "test")]
    if classes is not None:
        splits = [keep_classes(x, y, classes) for x, y in splits]
    (xtr, ytr), (xte, yte) = ((torch.from_numpy(x.copy()), torch.from_numpy(y.copy())) for x, y in splits)
    if subset is not None:  # a fixed random subset of the training set (ablations: cheaper, same for all)
        keep = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))[:subset]
        xtr, ytr = xtr[keep], ytr[keep]
    permuted = SPECS[arch].get("labels") == "permuted"
    if permuted:   # the data randomisation test: the same images, their labels shuffled among them (fixed)
        ytr = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(seed + 2))]
    # training accuracy on a fixed sample of the training set (or all of it): evaluation is not free on 2 cores
    ev = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed + 1))[:train_eval] \
        if train_eval else slice(None)
    xev, yev = xtr[ev], ytr[ev]
    model = build(arch, variant)
    previous, first = None, 1
    if resume:  # a second stage: continue from the shipped final weights, numbering epochs on
        previous = json.loads((out / f"{arch}.json").read_text())
        state = torch.load(out / f"{arch}.pt", map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() for k, v in state.items()})
        first = previous["epochs"] + 1
    if batchnorm:
        if resume:
            raise ValueError("--batchnorm trains from scratch; --resume continues the shipped (folded) model")
        model = with_batchnorm(model)
    if channels_last:  # the same arithmetic in another memory layout: faster convolutions on the CPU
        model = model.to(memory_format=torch.channels_last)
    if dropout is not None:  # this stage's dropout (the modules stay; p only matters in training)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = dropout
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * ((len(xtr) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    history = []
    t0 = time.time()
    last = first + epochs - 1
    for epoch in range(first, last + 1):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), batch_size):
            idx = perm[i:i + batch_size]
            xb = normalise(_augment(xtr[idx], gen) if augment else xtr[idx])[:, None]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        shipped = _shipped(model, arch, variant)
        row = {"epoch": epoch, "train_accuracy": round(accuracy(shipped, xev, yev), 5),
               "test_accuracy": round(accuracy(shipped, xte, yte), 5),
               "seconds": round(time.time() - t0, 1)}
        history.append(row)
        log(f"[{arch}/{variant}] epoch {epoch}/{last}: train {row['train_accuracy']:.4f} "
            f"test {row['test_accuracy']:.4f} ({row['seconds']:.0f}s)")
        if out is not None and epoch in snapshots and epoch != last:
            torch.save(_half_state(shipped), out / f"{arch}.epoch{epoch}.pt")
    command = (f"python -m zfwidgets.zoo.train --arch {arch} --epochs {epochs} --seed {seed}"
               + (f" --subset {subset}" if subset is not None else "")
               + (f" --train-eval {train_eval}" if train_eval else "") + (f" --lr {lr}" if lr != 2e-3 else "")
               + (" --resume" if resume else "") + ("" if augment else " --no-augment")
               + (f" --dropout {dropout}" if dropout is not None else "")
               + (" --batchnorm" if batchnorm else "") + (" --channels-last" if channels_last else "")
               + (" --snapshots " + (",".join(map(str, snapshots)) or "none")
                  if tuple(snapshots) != SNAPSHOT_EPOCHS and not resume else ""))
    stages = (previous.get("stages", [previous["command"]]) if previous else []) + [command]
    card = {"name": arch, "variant": variant, "seed": seed, "epochs": last, "batch_size": batch_size,
            "optimizer": f"AdamW(lr={lr}, weight_decay=5e-4), OneCycle", "augmentation":
            ("horizontal flip, shift up to 2 px" if augment else "none")
            + (f"; earlier stages: {previous['augmentation']}" if previous else ""), "weights_dtype": "float16",
            "batchnorm": ("BatchNorm2d after every conv in training, folded into the conv weights for shipping"
                          if batchnorm else (previous or {}).get("batchnorm")),
            "snapshot_epochs": ([e for e in previous["snapshot_epochs"][:-1]] if previous else [])
            + [e for e in snapshots if first <= e < last] + [last],
            "train_images": len(xtr), "train_accuracy_images": len(xev),
            **({"labels": "randomly permuted among the training images (fixed by the seed): train accuracy is "
                          "against the permuted labels, test accuracy against the true ones"} if permuted else {}),
            **({"classes": list(classes), "class_names": [FASHION_CLASSES[c] for c in classes]}
               if classes is not None else {}),
            "memory_format": "channels_last" if channels_last else (previous or {}).get("memory_format",
                                                                                      "contiguous"),
            "history": (previous["history"] if previous else []) + history, "test_accuracy": history[-1]["test_accuracy"],
            "train_accuracy": history[-1]["train_accuracy"], "commit": commit,
            "seconds": round((previous or {}).get("seconds", 0) + history[-1]["seconds"], 1),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "data": "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), 60,000 train / 10,000 test"
            + (f"; the {len(classes)} classes above only ({len(xtr)} train / {len(xte)} test)"
               if classes is not None else ""),
            "command": " && ".join(stages), "stages": stages,
            "stage_commits": (previous.get("stage_commits", [previous["commit"]]) if previous else []) + [commit]}
    if out is not None:
        torch.save(_half_state(shipped), out / f"{arch}.pt")
        (out / f"{arch}.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


# The bundled model's recipe (its card's two stages), used for every model trained since: 14 epochs with
# BatchNorm, dropout 0.3, flips and shifts, then 3 epochs of the folded model at a tenth of the learning rate,
# without augmentation, dropout 0.1. The one-cycle schedule of each stage anneals to zero, so a stage's last
# epochs show whether the test accuracy still moves (the plateau the ablation table is read at).
RECIPE = (dict(epochs=14, dropout=0.3, batchnorm=True),
          dict(epochs=3, lr=3e-4, resume=True, augment=False, dropout=0.1))


def train_recipe(arch: str, *, seed: int = 0, variant: str = "base", out: Path, root=None,
                 snapshots=SNAPSHOT_EPOCHS, channels_last: bool = True, log=print) -> dict:
    """Train ``arch`` (or one of its Table 3 variants) with :data:`RECIPE` into ``out``; returns the card."""
    card = None
    for stage in RECIPE:
        card = train(arch, seed=seed, variant=variant, out=out, root=root, train_eval=10000,
                     snapshots=snapshots, channels_last=channels_last, log=log, **stage)
    return card


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    tmp.replace(path)


# The ablation table's plateau check: the recipe's second stage once more, from each variant's final weights.
# Both ends of it are annealed to a learning rate of zero, so the change of the test error across it is how far
# the recipe's result still was from its plateau (the table reports both).
PLATEAU_CHECK = dict(epochs=3, lr=3e-4, resume=True, augment=False, dropout=0.1)


def ablation(arch: str, *, seed: int, out: Path, root=None, variants=None, keep: Path | None = None,
             log=print) -> dict:
    """ZF Table 3 at small scale: every variant trained with :data:`RECIPE` on the full training set, then
    :data:`PLATEAU_CHECK` (the second stage again) to show whether its test error had settled.

    The ``base`` row is the shipped model itself (trained with the same recipe; its card has the curve), which
    gets the check stage only. The table (with every variant's per-epoch curve) is rewritten after each
    variant, so a long run can be stopped and continued: rows already in the table are kept unless named in
    ``variants``. ``keep``: a folder to leave each variant's final weights and card in (``<variant>/``), so a
    later, longer check can start from them; by default they are discarded.
    """
    import shutil
    import tempfile
    path = out / f"{arch}.ablation.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    done = {r["variant"]: r for r in old.get("rows", []) if "history" in r}
    todo = list(VARIANTS) if variants is None else list(variants)
    unknown = [v for v in todo if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; the variants are {list(VARIANTS)}")
    rows = {v: r for v, r in done.items() if v not in todo and v in VARIANTS}  # kept, written with each new row
    table = None
    for variant, what in VARIANTS.items():
        if variant not in todo:
            continue
        n_params = sum(p.numel() for p in build(arch, variant).parameters())
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(keep) / variant if keep is not None else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            if variant == "base":  # the shipped model: the recipe already ran; its card has the curve
                for ext in ("pt", "json"):
                    shutil.copyfile(WEIGHTS_DIR / f"{arch}.{ext}", work / f"{arch}.{ext}")
                source = f"the shipped {arch} (its card), then the plateau check"
            else:
                train_recipe(arch, seed=seed, variant=variant, out=work, root=root, snapshots=(), log=log)
                source = "trained for this table"
            recipe = json.loads((work / f"{arch}.json").read_text())
            card = train(arch, seed=seed, variant=variant, out=work, root=root, train_eval=10000, snapshots=(),
                         channels_last=True, log=log, **PLATEAU_CHECK)
        recipe_error = round(1 - recipe["test_accuracy"], 5)
        rows[variant] = {"variant": variant, "description": what, "parameters": n_params,
                         "train_error": round(1 - card["train_accuracy"], 5),
                         "test_error": round(1 - card["test_accuracy"], 5),
                         "recipe_epochs": recipe["epochs"], "recipe_test_error": recipe_error,
                         "history": card["history"], "source": source,
                         "command": card["command"], "commit": card.get("commit"),
                         "seconds": card["seconds"]}
        table = _ablation_table(arch, seed, [rows[v] for v in VARIANTS if v in rows])
        _write_atomic(path, json.dumps(table, indent=1) + "\n")
        log(f"[ablation] {variant}: test error {recipe_error:.4f} after the recipe, "
            f"{rows[variant]['test_error']:.4f} after the check")
    return table if table is not None else _ablation_table(arch, seed, [rows[v] for v in VARIANTS if v in rows])


def _ablation_table(arch: str, seed: int, rows: list) -> dict:
    recipe_epochs = sum(st["epochs"] for st in RECIPE)
    return {"name": arch, "seed": seed, "epochs": recipe_epochs + PLATEAU_CHECK["epochs"],
            "recipe_epochs": recipe_epochs, "check_epochs": PLATEAU_CHECK["epochs"], "train_images": 60000,
            "recipe": "the bundled model's two stages (zoo.train.RECIPE), then its second stage again "
                      "(zoo.train.PLATEAU_CHECK)",
            "rows": rows, "commit": _commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "command": f"python -m zfwidgets.zoo.train --arch {arch} --ablation --seed {seed}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m zfwidgets.zoo.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHITECTURES, default="zfnet-fashion")
    p.add_argument("--epochs", type=int, default=None, help="default 12")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--no-augment", action="store_true", help="train without flips and shifts")
    p.add_argument("--dropout", type=float, default=None, help="dropout probability for this run")
    p.add_argument("--resume", action="store_true",
                   help="a second stage: continue from the weights and card in --out for --epochs more epochs")
    p.add_argument("--batchnorm", action="store_true",
                   help="train with BatchNorm after every conv; it is folded into the convs for shipping")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data-root", default=None, help="a torchvision download root (default: Debian's package)")
    p.add_argument("--ablation", action="store_true", help="train ZF Table 3's variants and write the table")
    p.add_argument("--subset", type=int, default=None, help="train on a fixed random subset of N images")
    p.add_argument("--recipe", action="store_true",
                   help="train with the bundled model's two-stage recipe (zoo.train.RECIPE) into --out")
    p.add_argument("--variants", default=None,
                   help="with --ablation: comma-separated variants to train (base: the check stage only)")
    p.add_argument("--keep", type=Path, default=None,
                   help="with --ablation: a folder to keep each variant's final weights in")
    p.add_argument("--channels-last", action="store_true", help="train in channels-last memory layout")
    p.add_argument("--snapshots", default=None,
                   help="comma-separated epochs to keep snapshots of (default 1,2,4,8; none: no snapshots)")
    p.add_argument("--train-eval", type=int, default=None,
                   help="measure training accuracy on a fixed sample of N training images (default: all)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    snapshots = () if a.snapshots == "none" else \
        tuple(int(e) for e in a.snapshots.split(",")) if a.snapshots else SNAPSHOT_EPOCHS
    if a.ablation:
        ablation(a.arch, seed=a.seed, out=a.out, root=a.data_root, log=log,
                 variants=a.variants.split(",") if a.variants else None, keep=a.keep)
    elif a.recipe:
        train_recipe(a.arch, seed=a.seed, out=a.out, root=a.data_root, snapshots=snapshots, log=log)
    else:
        train(a.arch, epochs=a.epochs or 12, seed=a.seed, out=a.out, root=a.data_root, subset=a.subset,
              train_eval=a.train_eval, lr=a.lr, resume=a.resume, augment=not a.no_augment,
              dropout=a.dropout, batchnorm=a.batchnorm, channels_last=a.channels_last,
              snapshots=snapshots, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
