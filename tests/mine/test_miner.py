"""The miner's pass against a brute-force reference (every activation of every image computed by plain
forwards with forward hooks, sorted), ties, data sources and errors."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import zfwidgets as zf
from zfwidgets.mine import mine
from zfwidgets.zoo.data import load_fashion_mnist


def brute_force(lens, batches, layers, k):
    """Top-k per map from every activation: plain model forwards over the same batches, forward hooks on the
    layers' modules, then a sort of all (value, image index, position) by value descending, index ascending."""
    acts = {l: [] for l in layers}
    mods = {l: lens.resolve(l)[2] for l in layers}
    for xb in batches:
        got = {}
        hs = [m.register_forward_hook(lambda mod, a, out, l=l: got.__setitem__(l, out.detach().clone()))
              for l, m in mods.items()]
        try:
            with torch.inference_mode():
                lens.model.eval()(xb)
        finally:
            for h in hs:
                h.remove()
        for l in layers:
            acts[l].append(got[l])
    out = {}
    for l in layers:
        a = torch.cat(acts[l])                   # N x C x H x W
        N, C = a.shape[:2]
        flat = a.flatten(2)
        rows = []
        for c in range(C):
            entries = []
            for i in range(N):
                v = flat[i, c]
                m = float(v.max())
                p = int(np.flatnonzero(v.numpy() == v.numpy().max())[0])   # first maximum, row-major
                entries.append((-m, i, p))
            entries.sort()
            rows.append([(-e[0], e[1], e[2]) for e in entries[:k]])
        out[l] = (rows, a.shape[-1])
    return out


def fashion_batches(lens, n, B):
    x, _ = load_fashion_mnist("test")
    xs = torch.stack([lens.transform(Image.fromarray(x[i])) for i in range(n)])
    return [xs[a:a + B] for a in range(0, n, B)]


def check_against(g, ref, layers, k):
    for l in layers:
        rows, width = ref[l]
        t = g.tensors(l)
        for c, row in enumerate(rows):
            assert t["values"][c].tolist() == [np.float32(r[0]) for r in row], (l, c)
            assert t["indices"][c].tolist() == [r[1] for r in row], (l, c)
            assert t["positions"][c].tolist() == [[r[2] // width, r[2] % width] for r in row], (l, c)


def test_pass_matches_brute_force(lens):
    layers, k, n, B = ["conv1", "conv3", "conv5"], 5, 200, 32
    g = mine(lens, "fashion-mnist:test", layers, k=k, limit=n, batch_size=B, progress=False, projections=False)
    assert g.count == n and g.layers == layers
    check_against(g, brute_force(lens, fashion_batches(lens, n, B), layers, k), layers, k)
    assert all(not m._forward_hooks for m in lens.model.modules())   # nothing left on the model


def test_default_layers_are_every_conv_layer(lens):
    g = mine(lens, "fashion-mnist:test", k=2, limit=40, progress=False, projections=False)
    assert g.layers == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [g.channels(l) for l in g.layers] == [32, 64, 96, 96, 64]


class Repeated(Dataset):
    """Each of a few images three times in a row: equal activations, so the order is decided by the index."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return 3 * len(self.images)

    def __getitem__(self, i):
        return self.images[i // 3], 0


def test_ties_are_broken_by_the_global_index(lens):
    x, _ = load_fashion_mnist("test")
    ds = Repeated([Image.fromarray(x[i]) for i in range(7)])
    # one image per forward: the copies of an image give the same bits (a batch's rounding may depend on the
    # rows' places in it, which is why the miner's batches are fixed ranges of the data set)
    g = mine(lens, ds, ["conv2"], k=6, batch_size=1, progress=False, projections=False)
    t = g.tensors("conv2")
    for c in range(t["values"].shape[0]):
        v, i = t["values"][c].tolist(), t["indices"][c].tolist()
        assert v[0::3] == v[1::3] == v[2::3] and v[0] != v[3]      # two groups of three equal values
        assert i == sorted(i[:3]) + sorted(i[3:]) and i[0] // 3 == i[2] // 3  # each group: one image, in order
    batches = [lens.transform(ds[j][0])[None] for j in range(len(ds))]
    check_against(g, brute_force(lens, batches, ["conv2"], 6), ["conv2"], 6)


def _folder(tmp_path, n=12, bad=()):
    x, _ = load_fashion_mnist("test")
    for i in range(n):
        d = tmp_path / ("bags" if i % 2 else "shoes") / ("deep" if i % 3 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(d / f"img{i:02d}.png")
    for name in bad:
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "README.txt").write_text("not an image")
    return tmp_path


def test_folder_recursive_with_undecodable_files(lens, tmp_path):
    root = _folder(tmp_path, bad=("shoes/broken.png",))
    g = mine(lens, str(root), ["conv5"], k=3, batch_size=5, progress=False, projections=False)
    assert g.count == 12
    assert [e["id"] for e in g.skipped] == ["shoes/broken.png"]
    assert g.meta["data"]["images"] == 13
    # the reference: the decodable files in sorted order, numbered as the miner numbers them
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    winners = {g.image_id(i) for i in g.tensors("conv5")["indices"].flatten().tolist() if i >= 0}
    assert winners <= set(files) - {"shoes/broken.png"}
    with pytest.raises(ValueError, match="broken.png"):
        mine(lens, str(root), ["conv5"], k=3, batch_size=5, progress=False, projections=False, strict=True)
    assert all(not m._forward_hooks for m in lens.model.modules()) and not lens.model.training


def test_clear_errors(lens, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        mine(lens, str(tmp_path / "empty"), progress=False)
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        mine(lens, "fashion-mnist:test", ["conv9"], limit=10, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        mine(lens, str(tmp_path / "nowhere"), progress=False)
    with pytest.raises(ValueError, match="split"):
        mine(lens, "fashion-mnist:valid", progress=False)
    with pytest.raises(ValueError, match="rule"):
        mine(lens, "fashion-mnist:test", rule="lrp", progress=False)
    with pytest.raises(TypeError, match="model must be"):
        mine(3, "fashion-mnist:test", progress=False)
    ds = Repeated([Image.new("L", (28, 28))])
    with pytest.raises(ValueError, match="shuffle"):
        mine(lens, DataLoader(ds, batch_size=2, shuffle=True), progress=False)


def test_dataloader_workers_and_python_data_agree(lens):
    s = zf.samples()
    a = mine(lens, s, ["conv2", "conv4"], k=4, batch_size=8, progress=False, projections=False)
    b = mine(lens, DataLoader(Repeated([x.image for x in s]), batch_size=8), ["conv2", "conv4"], k=4,
             progress=False, projections=False, limit=None)
    c = mine(lens, s, ["conv2", "conv4"], k=4, batch_size=8, workers=2, progress=False, projections=False)
    for l in ("conv2", "conv4"):
        assert all(torch.equal(a.tensors(l)[key], c.tensors(l)[key]) for key in ("values", "indices", "positions"))
        # the repeated data set: every winner of b is a copy of a winner of a, with the same value
        assert torch.equal(b.tensors(l)["values"][:, 0], a.tensors(l)["values"][:, 0])
        assert torch.equal(b.tensors(l)["indices"][:, 0] // 3, a.tensors(l)["indices"][:, 0])


def test_state_merge_is_exact_and_order_free():
    from zfwidgets.mine.state import TopK
    g = torch.Generator().manual_seed(0)
    vals = torch.randint(0, 4, (50, 3), generator=g).float()      # many ties
    pos = torch.randint(0, 9, (50, 3), generator=g)
    whole = TopK(3, 7)
    whole.update(vals, pos, torch.arange(50))
    for c in range(3):   # reference: sorted by value descending, then index ascending
        ref = sorted(range(50), key=lambda i: (-float(vals[i, c]), i))[:7]
        assert whole.indices[c].tolist() == ref
        assert whole.positions[c].tolist() == [int(pos[i, c]) for i in ref]
    parts = []
    for a, b in ((30, 50), (0, 13), (13, 30)):        # shards, merged in any order
        s = TopK(3, 7)
        for lo in range(a, b, 4):
            hi = min(lo + 4, b)
            s.update(vals[lo:hi], pos[lo:hi], torch.arange(lo, hi))
        parts.append(s)
    assert TopK.merge(parts).equal(whole) and TopK.merge(parts[::-1]).equal(whole)
    few = TopK(3, 7)
    few.update(vals[:2], pos[:2], torch.arange(2))
    assert few.indices[0].tolist()[2:] == [-1] * 5 and torch.isinf(few.values[0, 2:]).all()


def test_the_collector_is_given_back(lens):
    """The miner keeps the process's old objects out of the garbage collector's passes during the job only."""
    import gc
    assert gc.get_freeze_count() == 0
    mine(lens, "fashion-mnist:test", ["conv1"], limit=20, progress=False, projections=False)
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    with pytest.raises(ValueError, match="unknown layer"):
        mine(lens, "fashion-mnist:test", ["conv9"], limit=20, progress=False)
    assert gc.get_freeze_count() == 0
    gc.freeze()                       # a process that froze its objects itself keeps them frozen
    try:
        n = gc.get_freeze_count()
        mine(lens, "fashion-mnist:test", ["conv1"], limit=20, progress=False, projections=False)
        assert gc.get_freeze_count() == n
    finally:
        gc.unfreeze()


def test_the_ranks_share_out_every_winner_once(lens):
    """Each rank's projections (its chunks of the cost-balanced deal) together are one process's, exactly."""
    from zfwidgets.mine import project as P
    got = {}
    real = P.project_winners

    def spy(*a):
        got["args"] = a
        return real(*a)
    P.project_winners = spy
    try:
        mine(lens, "fashion-mnist:test", limit=300, progress=False)
    finally:
        P.project_winners = real
    lens_, source, specs, states, widths, rule, chunk = got["args"][:7]
    one = real(lens_, source, specs, states, widths, rule, 8, 0, 1, False)
    parts = [real(lens_, source, specs, states, widths, rule, 8, r, 3, False) for r in range(3)]
    assert sum(len(p) for p in parts) == len(one) and all(len(p) > 0 for p in parts)
    for p in parts:
        for q, (box, proj, patch) in p.items():
            assert one[q][0] == box and torch.equal(one[q][1], proj) and np.array_equal(one[q][2], patch), q


def test_offered_entries_settle_to_the_sorted_top_k():
    """Entries offered in pieces, settled at arbitrary points, give the top-k of a plain sort of all of them
    (value descending, image index ascending), ties included."""
    from zfwidgets.mine.state import TopK
    g = torch.Generator().manual_seed(1)
    C, k, n = 4, 5, 300
    vals = torch.randint(0, 6, (n,), generator=g).float()          # many ties
    maps = torch.randint(0, C, (n,), generator=g)
    idx = torch.randperm(1000, generator=g)[:n]                    # distinct image indices, in no order
    pos = torch.randint(0, 49, (n,), generator=g)
    s = TopK(C, k)
    for a in range(0, n, 37):
        s.offer(vals[a:a + 37], pos[a:a + 37], idx[a:a + 37], maps[a:a + 37])
        if a % 74 == 0:
            s.settle()
    for c in range(C):
        ref = sorted((-float(vals[j]), int(idx[j]), int(pos[j])) for j in range(n) if int(maps[j]) == c)[:k]
        s.settle()
        assert s.values[c].tolist() == [-r[0] for r in ref] + [float("-inf")] * (k - len(ref)), c
        assert s.indices[c].tolist() == [r[1] for r in ref] + [-1] * (k - len(ref)), c
        assert s.positions[c].tolist() == [r[2] for r in ref] + [-1] * (k - len(ref)), c
    assert s.pending == 0


@pytest.mark.parametrize("bad", [3, 150])
def test_a_nan_map_names_its_image_and_leaves_the_model_as_it_was(lens, bad):
    """A NaN maximum stops the pass with the image's name, early (no top-k state full yet) or late (every
    bar above zero, where a NaN is never above it), and the model keeps its hooks and modes."""
    x, _ = load_fashion_mnist("test")
    xs = [lens.transform(Image.fromarray(x[i])) for i in range(160)]
    xs[bad] = xs[bad].clone()
    xs[bad][0, 10:14, 10:14] = float("nan")
    lens.model.train()
    lens.model.conv2.eval()
    flags = [m.training for m in lens.model.modules()]
    hooks = [len(m._forward_hooks) for m in lens.model.modules()]
    try:
        with pytest.raises(ValueError, match=rf"layer 'conv1' gives NaN for image list/{bad}$"):
            mine(lens, xs, ["conv1", "conv4"], k=3, batch_size=16, progress=False, projections=False)
        assert [m.training for m in lens.model.modules()] == flags
        assert [len(m._forward_hooks) for m in lens.model.modules()] == hooks
    finally:
        lens.model.eval()
    del xs[bad]
    g = mine(lens, xs, ["conv1"], k=3, batch_size=16, progress=False, projections=False)
    assert not torch.isnan(g.tensors("conv1")["values"]).any()
