"""Images as users have them (path, file bytes, PIL, uint8 array, tensor) give the same model input; torchvision
weights named as users write them resolve to the same enum member."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import AlexNet_Weights, ResNet18_Weights

from zfwidgets.core.torchvision_models import _resolve_weights


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_every_image_form_gives_the_same_input(small_lens, tmp_path):
    arr = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    data = _png(arr)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    # reference: the pixels scaled and normalised by hand
    ref = (torch.from_numpy(arr).permute(2, 0, 1).double() / 255 - torch.tensor([0.5, 0.45, 0.4]).double()
           .view(3, 1, 1)) / 0.25
    forms = {"path": path, "str": str(path), "bytes": data, "bytearray": bytearray(data),
             "memoryview": memoryview(data), "PIL": Image.open(io.BytesIO(data)), "array": arr}
    for name, image in forms.items():
        x = small_lens.to_input(image)
        assert x.shape == (1, 3, 16, 16), name
        torch.testing.assert_close(x[0].double(), ref, atol=1e-6, rtol=0, msg=name)
    torch.testing.assert_close(small_lens.to_input(ref.float()), ref.float()[None])


def test_bytes_that_are_not_an_image_say_so(small_lens):
    with pytest.raises(ValueError, match="not a readable image"):
        small_lens.to_input(b"certainly not a PNG")
    with pytest.raises(ValueError, match="empty"):
        small_lens.to_input(b"")


def test_a_list_of_bytes_is_a_list_of_images(small_lens):
    arr = np.full((16, 16, 3), 7, dtype=np.uint8)
    batch = small_lens.to_batch([_png(arr), arr])
    torch.testing.assert_close(batch[0], batch[1])


@pytest.mark.parametrize("given", [AlexNet_Weights.IMAGENET1K_V1, "IMAGENET1K_V1", "DEFAULT",
                                   "AlexNet_Weights.IMAGENET1K_V1"])
def test_weights_as_enum_or_name(given):
    assert _resolve_weights("alexnet", given) is AlexNet_Weights.IMAGENET1K_V1


def test_weights_of_another_model_are_refused():
    with pytest.raises(TypeError, match="AlexNet_Weights"):
        _resolve_weights("alexnet", ResNet18_Weights.IMAGENET1K_V1)
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET9K'"):
        _resolve_weights("alexnet", "IMAGENET9K")
