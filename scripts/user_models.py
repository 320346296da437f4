"""The users' path through the tutorials, tested: every notebook with its parameter cell set to a torchvision
model (random weights written under the exact file name torchvision expects, in a temporary TORCH_HOME) and a
few generated images, with reduced work sizes; every cell must run without error.

`python scripts/user_models.py [--models alexnet,resnet18] [--notebooks 00,06] [--jobs 2]`
Also checks Lens.from_torchvision end to end with that TORCH_HOME: the file is found (the weights loaded are
the ones written), class names and preprocessing come from the weights' metadata, and without the file the
error names the path to put it in. Exit status 1 if anything failed; a table of results is printed.
"""
import argparse
import ast
import concurrent.futures as cf
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (notebook, model): why it does not run yet. Reported as "xfail"; a run that passes anyway is reported as
# "XPASS" and fails the step (strict), so that this list shrinks when the cause is fixed.
EXPECTED_FAILURES = {}
# (notebook, model): why it is not run: work the notebook's parameters cannot make small enough for CI.
NOT_RUN = {}


def write_weights(torch_home: Path, arch: str, seed: int = 0) -> Path:
    """Random weights for ``arch`` saved where torchvision looks for its default ImageNet weights."""
    import torch
    from torchvision.models import get_model, get_model_weights
    w = get_model_weights(arch).DEFAULT
    path = torch_home / "hub" / "checkpoints" / os.path.basename(w.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(get_model(arch, weights=None).state_dict(), path)
    return path


def write_images(folder: Path, n: int = 6) -> list:
    """``n`` generated RGB images of different sizes and formats, and an ImageFolder layout beside them."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        h, w = 200 + 37 * k, 260 - 11 * k
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (k + 1)) % 256, (yy * 3) % 256, ((xx + yy) * 2) % 256], -1)
        img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{k}.{'jpg' if k % 2 else 'png'}"
        Image.fromarray(img).save(path)
        paths.append(path)
        cls = folder / "classes" / f"class{k % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(cls / path.name)
    return paths


def write_snapshots(folder: Path, arch: str) -> Path:
    """A snapshot folder as zf.SnapshotSaver writes it during training (two 'epochs' of random weights)."""
    import torch
    import zfwidgets as zf
    from torchvision.models import get_model
    torch.manual_seed(1)
    model = get_model(arch, weights=None)
    saver = zf.SnapshotSaver(model, folder, epochs=(1, 2), name=arch, input_size=(3, 224, 224),
                             mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    for epoch in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1)
        saver(epoch)
    return folder


def overrides(arch: str, images: list, work: Path) -> dict:
    """Parameter values (as source text) for a user's torchvision model; a notebook gets those it defines."""
    paths = [str(p) for p in images]
    snaps = work / f"snapshots-{arch}"
    return {
        "MODEL": repr(arch), "WEIGHTS": repr("DEFAULT"), "IMAGES": repr(paths), "LABELS": "None",
        "IMAGE": repr(paths[0]), "IMAGE_INDEX": "1",
        "N_IMAGES": "8", "N_MAPS": "2", "DATA_FOLDER": repr(str(images[0].parent / "classes")),
        # a folder written by SnapshotSaver for a torchvision architecture needs the model to rebuild it
        "SNAPSHOTS": (f"__import__('zfwidgets.analysis.evolution', fromlist=['x']).load_snapshots({str(snaps)!r}, "
                      f"model=lambda: __import__('torchvision').models.get_model({arch!r}))"),
        "OTHER": repr(arch),
        "SIZE, STRIDE": "64, 32", "SHOW": "[0, 1, 2]",
        "N": "3", "PART": "32",
        "PARTS": repr({"centre": [(80, 80, 144, 144)] * 3, "corner": [(0, 0, 64, 64)] * 3}),
        "N_TEST": "6", "FRACTION": "0.5",
        "N_TRAIN, N_TEST": "4, 2", "N_PER_CLASS": "(1,)",
        "BASELINE": repr("alexnet"),
        # notebook 11: 2 images, 3 layers randomised (top, middle, first) in each kind of step, 3 units compared
        "N_SANITY": "2", "N_LAYERS": "3", "N_UNITS": "3",
        "OCCLUDER_STRIDE": "32", "REPEATS": "1", "SCRATCH_STEPS": "2",
        "MINE_LAYERS": repr(["conv1"]),   # the miner on the first conv layer only (a ResNet's every block: ~12,000 projections)
        # 30 + 30 of the digits (every class in both parts) instead of 899 + 898 through a 224x224 model
        "NEW_DATA": ("(lambda d: (d[0][:30], d[1][:30], d[2][:30], d[3][:30]))("
                     "__import__('zfwidgets.zoo.data', fromlist=['x']).load_digits28(seed=0))"),
    }


def parameter_cell(nb) -> int:
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return k
    raise ValueError("no cell tagged 'parameters'")


def assigned_names(source: str) -> set:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                names.add(ast.unparse(t).replace("(", "").replace(")", ""))
    return names


def run_notebook(path: Path, arch: str, values: dict, work: Path, timeout: int, verbose: bool = False) -> tuple:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(path, as_version=4)
    k = parameter_cell(nb)
    names = assigned_names(nb.cells[k].source)
    lines = [f"{name} = {values[name]}" for name in sorted(names) if name in values]
    injected = nbformat.v4.new_code_cell("# injected by scripts/user_models.py\n" + "\n".join(lines))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(k + 1, injected)
    cwd = work / f"run-{path.stem}-{arch}"
    cwd.mkdir(exist_ok=True)
    t = time.perf_counter()
    last = [t]

    def log(cell, cell_index, **_):
        if verbose:
            now = time.perf_counter()
            print(f"user_models:   {path.stem} {arch} cell {cell_index}: {now - last[0]:.1f} s", flush=True)
            last[0] = now
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
                            on_cell_executed=log)
    try:
        client.execute()
        return path.stem, arch, True, time.perf_counter() - t, ""
    except CellExecutionError as e:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", l) for l in str(e).splitlines() if l.strip()]
        return path.stem, arch, False, time.perf_counter() - t, (lines[-1] if lines else repr(e))[:300]
    except Exception as e:  # noqa: BLE001 - a dead kernel or a timeout is a failure of this notebook
        return path.stem, arch, False, time.perf_counter() - t, f"{type(e).__name__}: {e}".splitlines()[0][:300]


def check_from_torchvision(torch_home: Path, written: dict) -> list:
    """Lens.from_torchvision(..., weights=...) with the temporary TORCH_HOME; returns failures."""
    import torch
    import zfwidgets as zf
    from torchvision.models import get_model_weights
    bad = []
    for arch, path in written.items():
        enum = get_model_weights(arch)
        for weights in (enum.DEFAULT, "DEFAULT", enum.DEFAULT.name, str(enum.DEFAULT)):
            lens = zf.Lens.from_torchvision(arch, weights=weights)
            sd = torch.load(path, weights_only=True)
            same = all(torch.equal(v, sd[k]) for k, v in lens.model.state_dict().items())
            meta = enum.DEFAULT.meta["categories"]
            t = enum.DEFAULT.transforms()
            if not same:
                bad.append(f"{arch} {weights!r}: the weights loaded are not the file's")
            if lens.class_names != list(meta) or len(lens.class_names) != 1000:
                bad.append(f"{arch} {weights!r}: class names are not the weights' categories")
            x = lens.to_input(str(next(iter(Path(os.environ['ZF_TEST_IMAGES']).glob('*.png')))))
            if tuple(x.shape) != (1, 3, t.crop_size[0], t.crop_size[0]) or lens.mean != list(t.mean):
                bad.append(f"{arch} {weights!r}: preprocessing is not the weights' transforms ({tuple(x.shape)})")
    # missing file: the error names the path to put it in
    missing = torch_home / "hub" / "checkpoints" / "vgg11-8a719046.pth"
    try:
        zf.Lens.from_torchvision("vgg11", weights="DEFAULT")
        bad.append("vgg11 without its weights file loaded anyway")
    except RuntimeError as e:
        if str(missing) not in str(e):
            bad.append(f"the missing-file error does not name {missing}: {e}")
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="alexnet,resnet18")
    ap.add_argument("--notebooks", default="", help="comma-separated prefixes (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=600, help="per cell, seconds")
    ap.add_argument("--verbose", action="store_true", help="print each cell's time")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zfwidgets-user-") as tmp:
        work = Path(tmp)
        torch_home = work / "torch_home"
        os.environ["TORCH_HOME"] = str(torch_home)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ["MPLBACKEND"] = "Agg"
        sys.path.insert(0, str(ROOT))
        models = [m for m in args.models.split(",") if m]
        written = {arch: write_weights(torch_home, arch) for arch in models}
        images = write_images(work / "images")
        os.environ["ZF_TEST_IMAGES"] = str(work / "images")
        for arch in models:
            write_snapshots(work / f"snapshots-{arch}", arch)
        bad = check_from_torchvision(torch_home, written)
        print(f"user_models: Lens.from_torchvision with TORCH_HOME={torch_home}: "
              f"{'ok' if not bad else 'FAILED'} ({', '.join(p.name for p in written.values())})")
        for b in bad:
            print("  ", b)
        prefixes = [p for p in args.notebooks.split(",") if p]
        notebooks = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
                     if not prefixes or any(p.name.startswith(x) for x in prefixes)]
        jobs = [(nb, arch) for arch in models for nb in notebooks if (nb.stem, arch) not in NOT_RUN]
        for nb, arch in [(nb, arch) for arch in models for nb in notebooks if (nb.stem, arch) in NOT_RUN]:
            print(f"user_models: {nb.stem:<26} {arch:<9} {'not run':<6}          {NOT_RUN[nb.stem, arch]}")
        results = []
        with cf.ThreadPoolExecutor(args.jobs) as pool:
            futs = [pool.submit(run_notebook, nb, arch, overrides(arch, images, work), work, args.timeout,
                                args.verbose)
                    for nb, arch in jobs]
            for f in cf.as_completed(futs):
                r = f.result()
                results.append(r)
                why = EXPECTED_FAILURES.get((r[0], r[1]))
                status = ("ok" if why is None else "XPASS") if r[2] else ("FAILED" if why is None else "xfail")
                print(f"user_models: {r[0]:<26} {r[1]:<9} {status:<6} {r[3]:6.1f} s  {r[4] or why or ''}",
                      flush=True)
    failed = [r for r in results if not r[2] and (r[0], r[1]) not in EXPECTED_FAILURES]
    xfail = [r for r in results if not r[2] and (r[0], r[1]) in EXPECTED_FAILURES]
    xpass = [r for r in results if r[2] and (r[0], r[1]) in EXPECTED_FAILURES]
    not_run = len(models) * len(notebooks) - len(results)
    print(f"user_models: {len(results) - len(failed) - len(xfail)} of {len(results)} notebook runs passed "
          f"({not_run} not run), "
          f"{len(xfail)} expected failures, {len(failed)} failed, {len(xpass)} passed unexpectedly "
          f"({', '.join(models)}); from_torchvision checks {'passed' if not bad else 'failed'}; "
          f"{time.perf_counter() - t0:.0f} s")
    return 1 if failed or xpass or bad else 0


if __name__ == "__main__":
    sys.exit(main())
