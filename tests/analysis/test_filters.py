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
