"""filter_health against a direct DFT and a manual count of dead filters, on hand-made filters."""
import numpy as np
import pytest
import torch
from torch import nn

from zfwidgets import Lens
from zfwidgets.analysis.filters import BAND_EDGES, band_energies, filter_health

K = 5


def _hand_filters():
    const = np.ones((K, K))
    checker = (-1.0) ** np.add.outer(np.arange(K), np.arange(K))
    ramp = np.outer(np.arange(K) - 2.0, np.ones(K)) / 3
    return np.stack([const, checker, ramp])[:, None]  # 3 x 1 x 5 x 5


@pytest.fixture
def tiny_lens():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, K)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(_hand_filters()).float())
        conv.bias.copy_(torch.tensor([0.0, -4.0, 0.5]))
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    return Lens(model, input_size=(1, 8, 8))


def _direct_dft_bands(w, n, edges):
    """Band energies by the DFT sum written out, and bins classified by hand (no numpy.fft)."""
    kh, kw = w.shape
    u = np.arange(n)
    ey = np.exp(-2j * np.pi * np.outer(u, np.arange(kh)) / n)  # n x kh
    ex = np.exp(-2j * np.pi * np.outer(np.arange(kw), u) / n)  # kw x n
    X = ey @ w @ ex
    power = np.abs(X) ** 2 / n ** 2
    freq = np.where(u < n / 2, u / n, u / n - 1)  # cycles per pixel, as fftfreq defines them
    out = np.zeros(3)
    for a in range(n):
        for b in range(n):
            r = np.sqrt(freq[a] ** 2 + freq[b] ** 2)
            out[0 if r < edges[0] else 1 if r < edges[1] else 2] += power[a, b]
    return out


def test_band_energy_matches_direct_dft(tiny_lens):
    h = filter_health(tiny_lens)
    f = _hand_filters().astype(np.float32).astype(float)  # the model holds them in float32
    for i in range(3):
        ref = _direct_dft_bands(f[i, 0], 64, BAND_EDGES)
        np.testing.assert_allclose(h.band_energy[i], ref, rtol=1e-9, atol=1e-12)
        # Parseval: bands add up to the filter's squared norm
        assert h.band_energy[i].sum() == pytest.approx((f[i] ** 2).sum())
        assert h.weight_norm[i] == pytest.approx(np.sqrt((f[i] ** 2).sum()))
    np.testing.assert_allclose(h.band_fraction.sum(1), 1)


def test_constant_is_low_and_checkerboard_is_high(tiny_lens):
    frac = filter_health(tiny_lens).band_fraction
    # a finite box keeps sinc sidelobes: most, not all, of its energy is low frequency
    assert frac[0, 0] > 0.8 and frac[0, 2] < 0.08
    assert frac[1, 2] > 0.99 and frac[1, 0] < 0.005
    # a wide box is lower still; a multi-channel filter sums its channels' power
    wide = band_energies(np.ones((1, 1, 11, 11)))[0] / 121
    assert wide[0] > 0.9
    two = band_energies(np.stack([_hand_filters()[0, 0], _hand_filters()[1, 0]])[None])
    np.testing.assert_allclose(two[0], band_energies(_hand_filters()[:2]).sum(0))


def test_dead_fraction_matches_manual_count(tiny_lens):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(23, 1, 8, 8, generator=g) * 1.5
    x[:5] = -1.0  # constant images: the constant filter is never positive on these
    x[5:8] = 0.0
    h = filter_health(tiny_lens, x, batch_size=7)
    w, bias = _hand_filters()[:, 0], np.array([0.0, -4.0, 0.5])
    xs = x[:, 0].numpy().astype(float)
    never = np.zeros(3)
    for img in xs:
        for f in range(3):
            positive = False
            for y in range(8 - K + 1):
                for c in range(8 - K + 1):
                    if (img[y:y + K, c:c + K] * w[f]).sum() + bias[f] > 0:
                        positive = True
            never[f] += not positive
    np.testing.assert_allclose(h.dead_fraction, never / 23, atol=1e-12)
    assert h.n_images == 23
    assert 0 < h.dead_fraction[1] < 1 and h.dead_fraction[2] < h.dead_fraction[0]
    np.testing.assert_array_equal(h.dead, never / 23 >= 0.99)


def test_dead_filter_flagged_and_other_lens(tiny_lens):
    dead_model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))
    with torch.no_grad():
        dead_model[0].weight.fill_(0.01)
        dead_model[0].bias.copy_(torch.tensor([-100.0, 100.0]))
    other = Lens(dead_model, input_size=(1, 8, 8))
    x = torch.randn(6, 1, 8, 8)
    h = filter_health(tiny_lens, x, other=other)
    assert h.other.dead.tolist() == [True, False]
    assert h.other.dead_fraction.tolist() == [1.0, 0.0]
    assert h.other.weights.shape == (2, 1, 3, 3)
    fig = h.plot()
    assert len(fig.axes) >= 6
    assert "dead" in h.summary()


def test_model_left_unchanged(tiny_lens):
    model = tiny_lens.model
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    filter_health(tiny_lens, torch.randn(4, 1, 8, 8))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_input(tiny_lens):
    with pytest.raises(TypeError):
        filter_health(tiny_lens.model)
    with pytest.raises(ValueError, match="conv layer"):
        filter_health(tiny_lens, layer="fc2")
    with pytest.raises(ValueError, match="unknown layer"):
        filter_health(tiny_lens, layer="conv9")
    with pytest.raises(ValueError, match="channel"):
        filter_health(tiny_lens, torch.zeros(2, 3, 8, 8))
    with pytest.raises(TypeError, match="uint8"):
        filter_health(tiny_lens, np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="dead_threshold"):
        filter_health(tiny_lens, dead_threshold=0)
    with pytest.raises(ValueError, match="no images"):
        filter_health(tiny_lens, [])
    with pytest.raises(ValueError):
        band_energies(np.ones((3, 3)))


# ----- aliasing (ZF Fig. 6 c-e) ------------------------------------------------------------------
def _circ(d):
    """Distance between two frequencies on the circle of period 1 cycle per pixel."""
    d = abs(d) % 1
    return min(d, 1 - d)


def _alias_share_direct(img, period):
    """The alias-frequency share written out: a DFT by matrix products and each bin classified by hand."""
    h, w = img.shape
    taper = np.outer(np.sin(np.pi * np.arange(1, h + 1) / (h + 1)) ** 2, np.sin(np.pi * np.arange(1, w + 1) / (w + 1)) ** 2)
    img = (img - img.mean()) * taper
    n = period * int(np.ceil(4 * max(img.shape) / period))
    u = np.arange(n)
    ey = np.exp(-2j * np.pi * np.outer(u, np.arange(img.shape[0])) / n)
    ex = np.exp(-2j * np.pi * np.outer(np.arange(img.shape[1]), u) / n)
    power = np.abs(ey @ img @ ex) ** 2
    from fractions import Fraction
    freq = [Fraction(int(v), n) if v < n / 2 else Fraction(int(v) - n, n) for v in u]   # exact cycles/pixel
    points = [(Fraction(a, period), Fraction(b, period)) for a in range(-period, period + 1)
              for b in range(-period, period + 1)
              if (a, b) != (0, 0) and -Fraction(1, 2) <= Fraction(a, period) < Fraction(1, 2)
              and -Fraction(1, 2) <= Fraction(b, period) < Fraction(1, 2)]
    half = Fraction(1, 4 * period)
    near = 0.0
    for i in range(n):
        for j in range(n):
            if any(_circ(freq[i] - fy) < half and _circ(freq[j] - fx) < half for fy, fx in points):
                near += power[i, j]
    return near / power.sum()


def test_alias_energy_against_a_direct_dft_and_known_signals():
    from zfwidgets.analysis.filters import alias_energy
    rng = np.random.default_rng(0)
    grid = np.zeros((12, 12)); grid[::3, ::3] = 1                        # a period-3 grid of dots
    smooth = np.outer(np.hanning(12), np.hanning(12))
    noise = rng.normal(size=(12, 12))
    checker = (-1.0) ** np.add.outer(np.arange(12), np.arange(12))      # period 2
    got = alias_energy(np.stack([grid, smooth, noise])[:, None], 3)
    want = [_alias_share_direct(x, 3) for x in (grid, smooth, noise)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert got[0] > 0.8 and got[1] < 0.05
    assert alias_energy(checker, 2)[0] > 0.8 and alias_energy(checker, 3)[0] < 0.1
    # white noise: on average the share of the frequency square that counts: 24 px are padded to n = 96 bins,
    # 8 squares of 15 x 15 bins (strictly within 96 / 12 = 8 bins of their centre), about 8/36 of the area
    white = alias_energy(rng.normal(size=(400, 1, 24, 24)), 3)
    assert abs(white.mean() - 8 * 15 ** 2 / 96 ** 2) < 0.01
    assert np.isnan(alias_energy(np.ones((5, 5)), 3)[0])                  # constant: nothing to measure
    # relative: the grid's power sits at its alias points, white noise's is the same at every frequency, and an
    # isotropic blob (a Gaussian) has no more power at the alias points than beside them at those radii
    yy, xx = np.mgrid[:12, :12] - 5.5
    blob = np.exp(-(yy ** 2 + xx ** 2) / (2 * 1.5 ** 2))
    rel = alias_energy(np.stack([grid, blob])[:, None], 3, relative=True)
    assert rel[0] > 5 and 0.5 < rel[1] < 1.5
    assert abs(np.median(alias_energy(rng.normal(size=(400, 1, 24, 24)), 3, relative=True)) - 1) < 0.1
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="period"):
            alias_energy(grid, bad)
    with pytest.raises(ValueError, match="shape"):
        alias_energy(np.zeros((1, 1, 1, 4, 4)), 3)


def test_layer_aliasing_projects_each_maps_strongest_activation():
    import zfwidgets as zf
    from zfwidgets.analysis.filters import alias_energy, layer_aliasing
    lens = zf.load("zfnet-fashion")
    samples = zf.samples()[:12]
    a = layer_aliasing(lens, samples, "conv2", period=3, other=zf.load("allconv-fashion"), progress=False)
    x = torch.stack([lens.to_input(s.image)[0] for s in samples])
    with torch.no_grad():
        acts = lens.model[:5](x)          # conv1 relu1 pool1 conv2 relu2: conv2's rectified output
    assert lens.layers[1] == "conv2" and a.layer == "conv2"
    np.testing.assert_array_equal(a.image_index, acts.flatten(2).amax(2).argmax(0).numpy())
    assert a.projections.shape == (64, 1, 28, 28) and a.score.shape == (64,)
    np.testing.assert_allclose(a.score, alias_energy(a.projections, 3))
    np.testing.assert_allclose(a.relative, alias_energy(a.projections, 3, relative=True))
    assert a.other is not None and a.other.model == "allconv-fashion"
    assert a.other.score.shape == a.other.image_index.shape == (len(a.other.projections),)
    assert a.white == 8 * 19 ** 2 / 114 ** 2 and "alias" in a.summary()   # 28 px -> 114 bins, squares of 19
    few = layer_aliasing(lens, samples, "conv2", period=3, channels=3, progress=False)       # the first 3 maps
    np.testing.assert_allclose(few.score, a.score[:3])
    picked = layer_aliasing(lens, samples, "conv2", period=3, channels=[5, 1], progress=False)
    np.testing.assert_allclose(picked.score, a.score[[5, 1]])
    np.testing.assert_array_equal(picked.image_index, a.image_index[[5, 1]])
    with pytest.raises(ValueError, match="channels"):
        layer_aliasing(lens, samples, "conv2", period=3, channels=[64], progress=False)
    with pytest.raises(ValueError, match="period"):
        layer_aliasing(lens, samples, "conv2", period=1)
    with pytest.raises(ValueError, match="spatial"):
        layer_aliasing(lens, samples, "fc6", period=3, progress=False)
