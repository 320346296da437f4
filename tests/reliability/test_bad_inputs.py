"""A table of bad inputs: each gives a clear TypeError/ValueError naming what was expected and what came,
and leaves the model exactly as it was."""
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import zfwidgets as zf
from zfwidgets.core.images import MAX_PIXELS, load_image_bytes

from ..core.conftest import assert_same_state, model_state, small_sequential


def png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width, height):
    """A tiny PNG file whose header claims width x height pixels (compresses to almost nothing)."""
    raw = zlib.compress(b"\x00" * (width // 8 + 1), 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


LENS = zf.Lens(small_sequential(), input_size=(1, 16, 16))
RGB_LENS = zf.Lens(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 14 * 14, 3)),
                   input_size=(3, 16, 16))
IMG = torch.rand(1, 16, 16)
GOOD_PNG = png_bytes(np.zeros((16, 16), np.uint8))


def meta_lens():
    return zf.Lens(small_sequential().to("meta"), input_size=(1, 16, 16))


class Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return {"out": self.conv(x)}


ROWS = [
    # (id, call, error, words the message must contain)
    ("channels: 3 to a 1-channel model", lambda: zf.project(LENS, torch.rand(3, 16, 16), "conv1"),
     ValueError, "1-channel input, got 3"),
    ("channels: 1 to a 3-channel model", lambda: zf.project(RGB_LENS, torch.rand(1, 16, 16), "conv1"),
     ValueError, "3-channel input, got 1"),
    ("size", lambda: zf.project(LENS, torch.rand(1, 20, 16), "conv1"), ValueError, "16x16 input, got 20x16"),
    ("NaN pixels", lambda: LENS.predict(torch.full((1, 16, 16), float("nan"))), ValueError, "NaN"),
    ("inf pixels", lambda: LENS.predict(torch.full((1, 16, 16), float("inf"))), ValueError, "infinite"),
    ("empty array", lambda: LENS.predict(np.zeros((0, 0), np.uint8)), ValueError, "empty"),
    ("empty tensor", lambda: zf.project(LENS, torch.rand(1, 0, 16), "conv1"), ValueError, "tensor is empty"),
    ("4-D batch for one image", lambda: zf.project(LENS, torch.rand(4, 1, 16, 16), "conv1"), ValueError,
     "batch of 4"),
    ("unknown layer", lambda: zf.project(LENS, IMG, "conv7"), ValueError, "valid layer names are"),
    ("layer of the wrong type", lambda: zf.project(LENS, IMG, 1.5), TypeError, "layer must be"),
    ("channel out of range", lambda: zf.project(LENS, IMG, "conv2", 6), ValueError, "6 channels (0..5)"),
    ("negative channel", lambda: zf.project(LENS, IMG, "conv2", -1), ValueError, "out of range"),
    ("position out of range", lambda: zf.project(LENS, IMG, "conv2", 0, position=(9, 0)), ValueError,
     "outside layer 'conv2'"),
    ("position of the wrong kind", lambda: zf.project(LENS, IMG, "conv2", 0, position="centre"), TypeError,
     "'max', 'map' or a (y, x)"),
    ("unknown method", lambda: zf.project(LENS, IMG, "conv2", method="lrp"), ValueError, "method must be"),
    ("model without conv layers", lambda: zf.Lens(nn.Sequential(nn.Flatten(), nn.Linear(3, 2))), ValueError,
     "no Conv2d"),
    ("non-classification output", lambda: zf.Lens(Segmenter(), input_size=(1, 8, 8)).predict(
        torch.rand(1, 8, 8)), ValueError, "class scores N x K; got dict"),
    ("occluder larger than the image", lambda: zf.occlusion(LENS, IMG, size=17, stride=2), ValueError,
     "larger than the 16x16 image"),
    ("stride 0", lambda: zf.occlusion(LENS, IMG, size=4, stride=0), ValueError, "stride"),
    ("occluder box outside", lambda: zf.occlude(LENS, IMG, (20, 20, 24, 24)), ValueError, "outside"),
    ("non-image upload", lambda: load_image_bytes(b"%PDF-1.4 not an image", "notes.pdf"), ValueError,
     "notes.pdf: not a readable image"),
    ("empty upload", lambda: load_image_bytes(b"", "x.png"), ValueError, "x.png: the file is empty"),
    ("truncated PNG", lambda: load_image_bytes(GOOD_PNG[: len(GOOD_PNG) // 2], "cut.png"), ValueError,
     "cut.png: not a readable image"),
    ("decompression bomb", lambda: load_image_bytes(bomb_png(20000, 20000), "bomb.png"), ValueError,
     "bomb.png"),
    ("enormous array", lambda: LENS.predict(np.zeros((1, MAX_PIXELS + 1), np.uint8)), ValueError,
     "pixel limit"),
    ("float array", lambda: LENS.predict(np.zeros((16, 16), np.float64)), TypeError, "must be uint8"),
    ("uint8 tensor", lambda: LENS.predict(torch.zeros(1, 16, 16, dtype=torch.uint8)), TypeError,
     "must be float"),
    ("not an image at all", lambda: LENS.predict({"pixels": 1}), TypeError, "expected a PIL image"),
    ("model on another device", lambda: zf.project(meta_lens(), IMG, "conv1"), ValueError,
     "the model is on meta"),
    ("bundled name", lambda: zf.load("resnet-fashion"), ValueError, "available"),
    ("snapshot epoch", lambda: zf.load("zfnet-fashion", epoch=999), ValueError, "available epochs"),
    ("torchvision name", lambda: zf.Lens.from_torchvision("resnet9000"), ValueError,
     "unknown torchvision classification model"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gets_a_clear_error(row):
    _, call, error, words = row
    before = [model_state(LENS.model), model_state(RGB_LENS.model)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info:
            call()
    assert words in str(info.value), f"message {str(info.value)!r} should say {words!r}"
    assert_same_state(before[0], model_state(LENS.model))
    assert_same_state(before[1], model_state(RGB_LENS.model))


def test_table_is_big_enough():
    assert len(ROWS) >= 20


def test_unambiguous_channel_conversions_happen_and_say_so():
    grey = np.full((16, 16), 100, np.uint8)
    with pytest.warns(UserWarning, match="converted a L image to RGB"):
        x = RGB_LENS.to_input(grey)
    assert x.shape == (1, 3, 16, 16) and torch.allclose(x[0, 0], x[0, 2])
    with pytest.warns(UserWarning, match="converted a RGB image to L"):
        assert LENS.to_input(np.stack([grey] * 3, -1)).shape == (1, 1, 16, 16)
