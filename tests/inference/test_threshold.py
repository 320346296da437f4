"""Issue 29 item 4, Krypton's projective-field threshold (``tau``): the engine's approximation equals the
approximation written out by hand.

The reference is a float64 forward of a three-convolution chain written with ``F.conv2d`` in the test: each
convolution's output is the unoccluded image's output everywhere except inside its window of recomputed
positions, where it is the occluded image's; the window is the occluder grown by every convolution (kernel 3,
padding 1, stride 1: one position per side) and, where it is wider than ``ceil(tau * side)``, cut to that width
around its centre. The class scores read the whole last map (global average pooling, a linear layer).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zfwidgets as zf
from zfwidgets.inference import GraphOcclusion

SIDE = 16


def chain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(5, 3)).eval()


def by_hand(model, x, box, fill, tau):
    """Logits of ``x`` occluded by ``box`` under the projective-field threshold, and whether it cut."""
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    fc = model[-1]
    xo = x.clone()
    y0, x0, y1, x1 = box
    xo[..., y0:y1, x0:x1] = fill
    base, occl = x.double(), xo.double()
    lo, hi = [y0, x0], [y1, x1]
    cut = False
    for conv in convs:
        w, b = conv.weight.double(), conv.bias.double()
        base = F.relu(F.conv2d(base, w, b, padding=1))
        full = F.relu(F.conv2d(occl, w, b, padding=1))
        lo, hi = [max(v - 1, 0) for v in lo], [min(v + 1, SIDE) for v in hi]
        cap = math.ceil(tau * SIDE)
        for d in range(2):
            if hi[d] - lo[d] > cap:
                cut = True
                lo[d] = min(max(lo[d] + (hi[d] - lo[d] - cap) // 2, 0), SIDE - cap)
                hi[d] = lo[d] + cap
        occl = base.clone()
        occl[..., lo[0]:hi[0], lo[1]:hi[1]] = full[..., lo[0]:hi[0], lo[1]:hi[1]]
    return F.linear(occl.mean((2, 3)), fc.weight.double(), fc.bias.double()), cut


@pytest.mark.parametrize("tau", [0.3, 0.5, 1.0])
def test_threshold_equals_the_cut_written_out(tau):
    model = chain()
    lens = zf.Lens(model, input_size=(3, SIDE, SIDE))
    x = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    engine = GraphOcclusion(lens, x, mode="incremental")
    boxes = [(6, 6, 10, 10), (0, 0, 1, 1), (2, 9, 9, 16), (12, 1, 16, 3)]
    logits, _ = engine.run(torch.tensor(boxes), fill=0.5, tau=tau)
    assert engine.last_mode == "incremental"
    cuts = []
    for k, box in enumerate(boxes):
        ref, cut = by_hand(model, x, box, 0.5, tau)
        assert torch.allclose(logits[k].double(), ref[0], atol=1e-5), (tau, box)
        cuts.append(cut)
    assert engine.last_exact.tolist() == [not c for c in cuts]
    if tau == 1.0:
        assert not any(cuts)
    if tau == 0.3:
        assert cuts[0] and not cuts[1]      # the middle box is cut, the one-pixel corner box never grows wide
        xo = x.clone()
        xo[..., 6:10, 6:10] = 0.5
        exact, _ = lens.run(xo)
        assert not torch.allclose(logits[0], exact[0], atol=1e-5)   # the approximation does differ


def test_exact_runs_ignore_tau_and_bad_tau():
    """Plain forwards (mode="full") are exact whatever tau, and say so; tau outside (0, 1] is refused
    before anything runs."""
    lens = zf.Lens(chain(), input_size=(3, SIDE, SIDE))
    x = torch.randn(1, 3, SIDE, SIDE)
    engine = GraphOcclusion(lens, x, mode="full")
    engine.run(torch.tensor([(6, 6, 10, 10)]), tau=0.2)
    assert engine.last_mode == "full" and engine.last_exact.tolist() == [True]
    for bad in (0, 1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match="tau"):
            engine.run(torch.tensor([(6, 6, 10, 10)]), tau=bad)
