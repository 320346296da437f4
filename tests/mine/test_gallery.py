"""The gallery file: a round trip, lazy reads, Fig. 2, the TopGallery panel without the data set, and
tampered files refused with a clear error."""
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import zfwidgets as zf


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    torch.set_num_threads(1)
    lens = zf.load("zfnet-fashion")
    path = tmp_path_factory.mktemp("g") / "g.safetensors"
    g = zf.mine(lens, "fashion-mnist:test", ["conv1", "conv4"], k=4, limit=300, progress=False, out=path)
    return g, path


def test_round_trip_and_lazy_reads(mined):
    g, path = mined
    h = zf.Gallery.load(path)
    assert h.layers == g.layers and h.k == 4 and h.rule == "deconvnet" and h.count == 300
    assert all(h._layers[l].big == {} for l in h.layers)      # projections and patches stay in the file
    meta = h.meta
    assert meta["model"] == "zfnet-fashion" and meta["data"]["spec"] == "fashion-mnist:test"
    assert meta["zfwidgets"] == zf.__version__ and "commit" in meta
    for l in g.layers:
        for key, t in g.tensors(l).items():
            assert torch.equal(t, h.tensors(l)[key]), (l, key)
        for c in (0, 3):
            for a, b in zip(g.hits(l, c), h.hits(l, c)):
                assert a.index == b.index and a.box == b.box and a.position == b.position
                assert torch.equal(a.projection, b.projection) and (a.patch == b.patch).all()
    i = int(h.tensors("conv4")["indices"][0, 0])
    assert h.image_id(i) == f"fashion-mnist:test/{i}"


def test_plot_and_panel_without_the_data_set(mined):
    _, path = mined
    g = zf.Gallery.load(path)
    fig = g.plot("conv4", channels=[0, 1, 2])
    assert len([ax for ax in fig.axes if ax.images]) == 6       # projections and patches of three maps
    panel = zf.TopGallery(g, "conv4", autostart=False)
    try:
        panel.mine()
        st = panel.state
        assert st["mined"] and st["layer"] == "conv4" and st["channels"] == list(range(96))
        assert [h[0] for h in st["hits"]] == g.tensors("conv4")["indices"][0].tolist()
        with pytest.raises(RuntimeError, match="without the data set"):
            panel.open_tile(0, 0)
    finally:
        panel.close()


def _rewrite(src, dst, tensors=None, header=None, drop=(), extra=None):
    with safe_open(str(src), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
        meta = dict(f.metadata())
    t.update(tensors or {})
    t.update(extra or {})
    if header is not None:
        meta = header(meta)
    save_file(t, str(dst), metadata=meta)
    return dst


def _with_meta(change):
    def header(meta):
        h = json.loads(meta["zfwidgets"])
        change(h)
        return {"zfwidgets": json.dumps(h)}
    return header


def test_tampered_files_are_refused(mined, tmp_path):
    _, path = mined
    bad = tmp_path / "bad.safetensors"
    # code: a pickle (what torch.save writes) with a payload that would run on unpickling
    bad.write_bytes(pickle.dumps({"conv1/values": torch.zeros(3)}))
    with pytest.raises(ValueError, match="not a safetensors gallery file.*never pickled"):
        zf.Gallery.load(bad)
    cases = {
        "wrong shape": (dict(tensors={"conv1/values": torch.zeros(32, 5)}), r"conv1/values is F32 \(32, 5\), expected F32 \(32, 4\)"),
        "wrong dtype": (dict(tensors={"conv4/indices": torch.zeros(96, 4, dtype=torch.int32)}), "conv4/indices is I32"),
        "projections cut": (dict(tensors={"conv1/projections": torch.zeros(10, dtype=torch.float16)}), "sizes of its boxes"),
        "extra tensor": (dict(extra={"conv1/code": torch.zeros(1)}), "unexpected tensors"),
        "missing tensor": (dict(drop=("conv4/patches",)), "missing tensors"),
        "bad json": (dict(header=lambda m: {"zfwidgets": m["zfwidgets"][:-5]}), "not valid JSON"),
        "not a gallery": (dict(header=lambda m: {"other": "1"}), "not a gallery"),
        "bad k": (dict(header=_with_meta(lambda h: h["meta"].__setitem__("k", "9"))), "'k' is missing or not a int"),
        "version": (dict(header=_with_meta(lambda h: h.__setitem__("version", 99))), "version 99"),
        "layer name": (dict(header=_with_meta(lambda h: h["meta"]["layers"][0].__setitem__("name", "../x"))), "plain name"),
        "box outside": (dict(tensors={"conv1/boxes": torch.full((32, 4, 8), 40, dtype=torch.long)}), "outside"),
    }
    for name, (kw, match) in cases.items():
        f = _rewrite(path, tmp_path / f"{name.replace(' ', '_')}.safetensors", **kw)
        with pytest.raises(ValueError, match=match):
            zf.Gallery.load(f)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="refused"):
        zf.Gallery.load(trunc)
    with pytest.raises(FileNotFoundError):
        zf.Gallery.load(tmp_path / "none.safetensors")
