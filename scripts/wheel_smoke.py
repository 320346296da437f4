"""Smoke test of an installed (non-editable) zfwidgets, run by scripts/check_wheel from outside the checkout.

Loads both bundled models and a training snapshot, the bundled samples, makes a projection, an occlusion
map and a panel, and checks that the package imported is the installed one with its own data files.
"""
import importlib.metadata as md
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import zfwidgets as zf  # noqa: E402

checkout = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else None
here = Path(zf.__file__).resolve()
assert "site-packages" in here.parts, f"zfwidgets imported from {here}, not from an installed wheel"
if checkout is not None:
    assert checkout not in here.parents, f"zfwidgets imported from the checkout ({here})"
assert zf.__version__ == md.version("zfwidgets"), (zf.__version__, md.version("zfwidgets"))
dist = md.distribution("zfwidgets")
assert not (dist.read_text("direct_url.json") or "").count('"editable": true'), "an editable install"

torch.set_num_threads(1)
lenses = {name: zf.load(name) for name in zf.available()}
assert set(lenses) == {"zfnet-fashion", "allconv-fashion", "zfnet-fashion-coarse", "zfnet-fashion-half",
                       "zfnet-fashion-randomlabels"}, sorted(lenses)
epochs = zf.snapshot_epochs("zfnet-fashion")
snap = zf.load("zfnet-fashion", epoch=epochs[0])
assert zf.snapshot_epochs("zfnet-fashion-half") == [1, 2, 3, 4, 6, 8, 12, 17]
assert zf.load("zfnet-fashion-half", epoch=3).epoch == 3 and len(lenses["zfnet-fashion-half"].class_names) == 5
samples = zf.samples()
assert len(samples) == 40, len(samples)
lens = lenses["zfnet-fashion"]
image = samples[36].image

p = zf.project(lens, image, "conv5", method="deconvnet")
img = p.to_image()
assert img.dtype == np.uint8 and img.shape[2] == 3 and img.std() > 0, (img.dtype, img.shape)
q = zf.project(snap, image, "conv2", method="guided")
assert q.to_image().shape == img.shape

maps = zf.occlusion(lens, image, size=8, stride=4, progress=False)
assert maps.probability.shape == maps.ys.shape + maps.xs.shape and torch.isfinite(maps.probability).all()
panel = zf.OcclusionPanel(lens, image)
explorer = zf.Explorer(lenses["allconv-fashion"], [s.image for s in samples[:4]])
print(f"wheel smoke: ok (zfwidgets {zf.__version__} from {here.parent}; "
      f"{len(lens.layers)} layers; snapshots {epochs}; panels {type(panel).__name__}, {type(explorer).__name__})")
