"""The pixel end of the input layer (:mod:`.inputs`): image files and bytes decoded into PIL images (with a
decompression-bomb limit), images in the model's colour mode, and model-input tensors checked, with clear
errors."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["as_pil", "check_input_tensor", "load_image_bytes"]

# decompression-bomb limit: far above any image a CNN panel needs
MAX_PIXELS = 64_000_000


def load_image_bytes(data: bytes, name: str = "upload") -> Image.Image:
    """Decode an uploaded file into a PIL image, or raise ValueError saying why it is not one."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the file's bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)))
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"{name}: {img.width}x{img.height} pixels is larger than the "
                                 f"{MAX_PIXELS:,}-pixel limit for one image")
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ValueError(f"{name}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, Image.UnidentifiedImageError) as e:
        raise ValueError(f"{name}: not a readable image file ({e})") from None
    return img


def as_pil(image, channels: int | None) -> Image.Image:
    """A PIL image in the colour mode the model wants (1 channel: 'L', 3: 'RGB').

    Accepts a PIL image, a path, an image file's bytes, or a uint8 array HxW / HxWx1 / HxWx3 / HxWx4.
    Grayscale given to an RGB model (and RGB to a grayscale one) is converted, with a warning that says so.
    """
    if isinstance(image, (str, Path)):
        image = load_image_bytes(Path(image).read_bytes(), str(image))
    elif isinstance(image, (bytes, bytearray, memoryview)):
        image = load_image_bytes(image, "the image bytes")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"an image array must be uint8 (HxW or HxWxC); got dtype {image.dtype}. "
                            "Pass a float tensor CxHxW for already-preprocessed model input.")
        if image.size == 0:
            raise ValueError(f"the image is empty (shape {image.shape})")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError("expected a PIL image, a uint8 array (HxW or HxWxC), a file path, an image file's bytes "
                        "or a float tensor "
                        f"(CxHxW or 1xCxHxW); got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image is empty ({image.width}x{image.height})")
    if image.width * image.height > MAX_PIXELS:
        raise ValueError(f"{image.width}x{image.height} pixels is larger than the {MAX_PIXELS:,}-pixel limit")
    want = {1: "L", 3: "RGB"}.get(channels)
    if want and image.mode != want:
        grey_to_rgb = want == "RGB" and image.mode in ("L", "LA", "I", "I;16", "F", "1")
        rgb_to_grey = want == "L" and image.mode in ("RGB", "RGBA", "P", "CMYK")
        if grey_to_rgb or rgb_to_grey:
            warnings.warn(f"converted a {image.mode} image to {want} for a {channels}-channel model",
                          stacklevel=3)
        image = image.convert(want)
    return image


def check_input_tensor(x: torch.Tensor, channels: int | None, size: tuple | None, device) -> torch.Tensor:
    """Validate preprocessed input: float, CxHxW or 1xCxHxW, finite, right channels/size/device. Returns 1xCxHxW."""
    if not torch.is_floating_point(x):
        raise TypeError(f"a tensor image must be float (already preprocessed), got dtype {x.dtype}; "
                        "pass uint8 pixels as a numpy array or PIL image instead")
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image (CxHxW or 1xCxHxW), got a batch of {x.shape[0]} "
                             f"(shape {tuple(x.shape)}); pass the images one at a time")
    elif x.dim() == 3:
        x = x.unsqueeze(0)
    else:
        raise ValueError(f"expected a tensor CxHxW or 1xCxHxW, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"the image tensor is empty (shape {tuple(x.shape)})")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"the model takes {channels}-channel input, got {x.shape[1]} channels "
                         f"(shape {tuple(x.shape)})")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(f"the model takes {size[0]}x{size[1]} input, got {x.shape[-2]}x{x.shape[-1]}")
    if not torch.isfinite(x).all():
        raise ValueError("the image contains NaN or infinite values")
    if device is not None and x.device != device:
        raise ValueError(f"the image is on {x.device} but the model is on {device}; move one of them "
                         f"(e.g. image.to('{device}'))")
    return x
