"""The bundled models, snapshots, samples and data loaders."""
import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import zfwidgets as zf
from zfwidgets.zoo import WEIGHTS_DIR, load_weights
from zfwidgets.zoo.data import DEBIAN_DIR, _read_idx, load_digits28, load_fashion_mnist
from zfwidgets.zoo.models import VARIANTS, build

HAVE_DATA = (DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").exists()
needs_data = pytest.mark.skipif(not HAVE_DATA and not os.environ.get("CI"),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.mark.parametrize("name", ["zfnet-fashion", "allconv-fashion", "zfnet-fashion-coarse", "zfnet-fashion-half",
                                  "zfnet-fashion-randomlabels"])
@needs_data
def test_shipped_weights_reproduce_the_card_accuracy(name):
    """An independent recomputation over the 10,000 test images (zfnet-fashion-half: the 5,000 of its five
    classes, labels numbered in the card's order) with the shipped float16 weights."""
    lens = zf.load(name)
    card = zf.model_card(name)
    x, y = load_fashion_mnist("test")
    if "classes" in card:
        keep = np.isin(y, card["classes"])
        x, y = x[keep], np.searchsorted(np.array(card["classes"]), y[keep])
        assert sorted(card["classes"]) == card["classes"] and len(y) == 5000
        assert lens.class_names == [zf.zoo.data.FASHION_CLASSES[c] for c in card["classes"]]
    batch = torch.from_numpy((x.astype(np.float32) / 255 - lens.mean[0]) / lens.std[0])[:, None]
    logits, _ = lens.run(batch)
    acc = float((logits.argmax(1).numpy() == y).mean())
    assert abs(acc - card["test_accuracy"]) < 2e-3
    assert card["seed"] == 0 and card["history"][-1]["test_accuracy"] == card["test_accuracy"]
    assert card["epochs"] == card["history"][-1]["epoch"] == len(card["history"])
    assert len(card["commit"]) >= 40 and card["stages"]


@needs_data
def test_random_label_model_memorised_its_permuted_labels():
    """Issue 27 item 5: >= 95% train accuracy on the permuted labels, recomputed here from the card's recipe
    (the subset and the permutation drawn as its seed says), and chance on the true test labels."""
    lens, card = zf.load("zfnet-fashion-randomlabels"), zf.model_card("zfnet-fashion-randomlabels")
    x, y = load_fashion_mnist("train")
    x, y = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(card["seed"]))[:card["train_images"]]
    x, y = x[keep], y[keep]
    permuted = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(card["seed"] + 2))]
    assert float((permuted == y).float().mean()) < 0.2           # the labels really were shuffled
    batch = ((x.float() / 255 - lens.mean[0]) / lens.std[0])[:, None]
    logits, _ = lens.run(batch)
    pred = logits.argmax(1)
    assert float((pred == permuted).float().mean()) >= 0.95
    assert float((pred == y).float().mean()) < 0.3 and card["test_accuracy"] < 0.2


@pytest.mark.parametrize("name, target", [("zfnet-fashion", 0.93), ("allconv-fashion", 0.92)])
def test_issue_target_accuracy(name, target):
    """Issue 3's targets. Reported as an expected failure while the shipped model is below its target."""
    acc = zf.model_card(name)["test_accuracy"]
    if acc < target:
        pytest.xfail(f"{name} ships at {acc:.2%} test accuracy, below the {target:.0%} target (issue 3 open)")
    assert acc >= target


def test_transform_matches_the_training_normalisation():
    lens = zf.load("zfnet-fashion")
    s = zf.samples()[0]
    x = lens.to_input(s.image)
    arr = np.asarray(s.image, dtype=np.float32) / 255
    assert torch.allclose(x[0, 0], torch.from_numpy((arr - 0.2860) / 0.3530), atol=1e-6)


def test_load_names_snapshots_and_layers():
    lens = zf.load("zfnet-fashion")
    assert lens.layers == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert not lens.model.training and lens.input_size == (1, 28, 28)
    assert lens.class_names[9] == "Ankle boot"
    with pytest.raises(ValueError, match=r"available: \['zfnet-fashion', 'allconv-fashion', 'zfnet-fashion-coarse'"):
        zf.load("alexnet-fashion")
    epochs = zf.snapshot_epochs("zfnet-fashion")
    assert epochs[:4] == [1, 2, 4, 8] and epochs[-1] == zf.model_card("zfnet-fashion")["epochs"]
    early = zf.load("zfnet-fashion", epoch=1)
    assert not torch.equal(early.model.conv1.weight, lens.model.conv1.weight)
    with pytest.raises(ValueError, match="available epochs"):
        zf.load("zfnet-fashion", epoch=3)
    # allconv has no max pooling: no switches to record
    ac = zf.load("allconv-fashion")
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in ac.model.modules())
    assert ac.layers[:2] == ["conv1", "pool1"] or "conv1" in ac.layers


def test_package_data_is_small_and_offline():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    total += sum(p.stat().st_size for p in (WEIGHTS_DIR.parent / "samples").rglob("*"))
    assert total < 18 * 2 ** 20       # issue 19: every bundled model and snapshot, float16, under 18 MB


def test_tampered_weights_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ValueError, match="refused to load evil.pt"):
        load_weights(bad)
    assert not (tmp_path / "pwned").exists()
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2, dtype=torch.float16)}, good)
    assert load_weights(good)["w"].dtype == torch.float32


def test_samples():
    s = zf.samples()
    assert len(s) == 40 and [x.label for x in s[:4]] == [0] * 4
    assert s[0].image.size == (28, 28) and s[0].image.mode == "L"
    assert all(x.class_name == zf.load("zfnet-fashion").class_names[x.label] for x in s[::7])
    assert len(zf.samples(label=3)) == 4
    with pytest.raises(ValueError):
        zf.samples(label=10)


@needs_data
def test_samples_are_the_documented_test_images():
    x, y = load_fashion_mnist("test")
    for smp in zf.samples():
        assert smp.label == y[smp.index]
        assert np.array_equal(np.asarray(smp.image), x[smp.index])
        assert smp.index == np.flatnonzero(y == smp.label)[[s.index for s in zf.samples(smp.label)].index(smp.index)]


def test_idx_reader_rejects_truncated_files(tmp_path):
    header = (0x0803).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") * 2
    p = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(header + bytes(range(18)))
    assert _read_idx(p).shape == (2, 3, 3)
    with gzip.open(p, "wb") as f:
        f.write(header + bytes(10))
    with pytest.raises(ValueError, match="truncated"):
        _read_idx(p)


def test_digits28_second_data_set():
    xtr, ytr, xte, yte = load_digits28()
    assert xtr.shape[1:] == (28, 28) and xtr.dtype == np.uint8
    assert len(xtr) + len(xte) == 1797 and set(ytr) == set(range(10))
    assert xtr[:, :4].max() == 0  # a 4-pixel border like Fashion-MNIST's framing
    assert abs(len(xte) - len(xtr)) <= 10


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ablation_variants_build_and_run(variant):
    m = build("zfnet-fashion", variant).eval()
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    names = {n for n, _ in m.named_children()}
    removed = variant.startswith("no-")
    assert ("conv3" in names) == (not (removed and "conv3" in variant))
    assert ("fc6" in names) == (not (removed and "fc6" in variant))
    if variant.startswith("wide-"):  # the wide variants really are wider than the base model
        assert sum(p.numel() for p in m.parameters()) > sum(p.numel() for p in build("zfnet-fashion").parameters())


def test_ablation_table_ships():
    import json
    if not (WEIGHTS_DIR / "zfnet-fashion.ablation.json").exists():
        pytest.xfail("the ablation table has not been shipped yet (issue 3 open)")
    table = json.loads((WEIGHTS_DIR / "zfnet-fashion.ablation.json").read_text())
    assert [r["variant"] for r in table["rows"]] == list(VARIANTS)
    assert all(0 <= r["test_error"] <= 1 for r in table["rows"])


@pytest.mark.parametrize("arch", ["zfnet-fashion", "allconv-fashion"])
def test_batchnorm_folding_is_exact(arch):
    """--batchnorm trains with BatchNorm after each conv and ships the plain layout with BN folded in:
    the folded model must compute what the BN model computes in eval mode (float64, random statistics)."""
    from zfwidgets.zoo.train import fold_batchnorm, with_batchnorm
    torch.manual_seed(0)
    bn_model = with_batchnorm(build(arch)).double()
    for m in bn_model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.2, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    bn_model.eval()
    plain = fold_batchnorm(bn_model, build(arch).double()).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(plain(x), bn_model(x), rtol=1e-10, atol=1e-10)


def test_coarse_and_half_architectures():
    """The Fig. 6 twin differs from zfnet-fashion only in its first layer; the transfer source only in its outputs."""
    base, coarse, half = build("zfnet-fashion"), build("zfnet-fashion-coarse"), build("zfnet-fashion-half")
    c1 = coarse.conv1
    assert (c1.kernel_size, c1.stride, c1.padding) == ((9, 9), (3, 3), (4, 4))
    names = lambda m: [(n, type(x).__name__) for n, x in m.named_children()]   # noqa: E731
    assert names(coarse) == names(base) == names(half)
    x = torch.zeros(2, 1, 28, 28)
    # 28 -> conv1/3 -> 10 -> pool -> 5 -> pool -> 3 -> pool -> 2: fc6 reads 64 x 2 x 2
    assert coarse[:-8](x).shape == (2, 64, 2, 2) and coarse.fc6.in_features == 256
    assert half(x).shape == (2, 5) and base(x).shape == (2, 10)
    for a, b in zip(base.parameters(), half.parameters()):
        if a.shape != b.shape:
            assert a.shape[0] == 10 and b.shape[0] == 5      # fc8 only


@needs_data
def test_fashion_transfer_split_is_the_other_five_classes():
    from zfwidgets.zoo.data import FASHION_CLASSES, load_fashion_transfer
    from zfwidgets.zoo.models import HALF_CLASSES
    from zfwidgets.zoo.data import keep_classes
    xtr, ytr, xte, yte = load_fashion_transfer()
    raw_x, raw_y = load_fashion_mnist("test")
    others = [c for c in range(10) if c not in HALF_CLASSES]
    assert others == [2, 3, 6, 7, 9] and [FASHION_CLASSES[c] for c in HALF_CLASSES] == [
        "T-shirt/top", "Trouser", "Coat", "Sandal", "Bag"]
    mask = np.isin(raw_y, others)
    np.testing.assert_array_equal(xte, raw_x[mask])
    np.testing.assert_array_equal(np.array(others)[yte], raw_y[mask])     # renumbered in the order given
    assert len(xtr) == 30000 and np.bincount(ytr).tolist() == [6000] * 5
    x, y = keep_classes(raw_x, raw_y, HALF_CLASSES)
    np.testing.assert_array_equal(np.array(HALF_CLASSES)[y], raw_y[~mask])
    with pytest.raises(ValueError, match="distinct"):
        load_fashion_transfer([1, 1])
