"""Building torchvision CNNs offline, classification and segmentation (``torchvision.models.segmentation``), with
preprocessing and class names from the weights' metadata."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torchvision
from torchvision.models import get_model_builder, get_model_weights, list_models

__all__ = ["build_torchvision", "imagenet_classes", "segmentation_models"]


class ImageNetTransform:
    """Resize 256 → centre crop 224 → normalise, as torchvision's ImageNet weights expect (picklable)."""

    def __init__(self, resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.resize, self.crop, self.mean, self.std = resize, crop, list(mean), list(std)

    def __call__(self, img):
        from torchvision.transforms import functional as TF
        img = TF.resize(img, self.resize, antialias=True)
        img = TF.center_crop(img, self.crop)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)


def segmentation_models() -> list:
    """torchvision's segmentation models (``fcn_resnet50``, ``deeplabv3_mobilenet_v3_large``...)."""
    return list_models(module=torchvision.models.segmentation)


def imagenet_classes() -> list:
    """The 1,000 ImageNet class names, from torchvision's metadata (offline)."""
    return list(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def _resolve_weights(arch: str, weights):
    if weights is None:
        return None
    enum = get_model_weights(arch)
    if isinstance(weights, str):
        weights = weights.removeprefix(f"{enum.__name__}.")   # "AlexNet_Weights.IMAGENET1K_V1" as printed
        try:
            return enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise ValueError(f"unknown weights {weights!r} for {arch}; available: "
                             f"{['DEFAULT'] + [w.name for w in enum]}") from None
    if isinstance(weights, enum):
        return weights
    raise TypeError(f"weights must be None, 'DEFAULT', a weights name or a {enum.__name__} member, "
                    f"got {type(weights).__name__}")


def _default_weights(arch: str):
    try:
        return get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def _categories(w, builder_kwargs):
    """A segmentation model's class names: its weights' categories, unless ``num_classes`` gives another count."""
    if w is None:
        return None
    cats = list(w.meta["categories"])
    n = builder_kwargs.get("num_classes")
    return cats if n is None or n == len(cats) else None


def _at_size(transform: ImageNetTransform, input_size) -> tuple:
    """The weights' preprocessing at another input size: the same resize-to-crop ratio (256 → 224 becomes
    146 → 128 for 128 x 128), centre-cropped to ``(H, W)``; ``(transform, (H, W))``."""
    if not (isinstance(input_size, (tuple, list)) and len(input_size) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)):
        raise ValueError(f"input_size must be (channels, height, width) of positive ints, got {input_size!r}")
    h, w = input_size[1:]
    resize = round(min(h, w) * transform.resize / transform.crop)
    return ImageNetTransform(resize, [h, w], transform.mean, transform.std), (h, w)


def _preprocessing(t):
    """``(ImageNetTransform, crop)`` of a weights' transforms: a classifier's resize and crop; a segmentation
    model's resize (shorter side), centre-cropped to a square of that side so that every image has one size."""
    resize = int(t.resize_size[0])
    crop = int(t.crop_size[0]) if hasattr(t, "crop_size") else resize
    return ImageNetTransform(resize, crop, t.mean, t.std), crop


def build_torchvision(arch: str, weights=None, input_size=None, **builder_kwargs):
    """``(model in eval mode, transform, class names, input size, weights enum or None)``.

    Segmentation models (:func:`segmentation_models`) are built with ``weights_backbone=None`` unless it is
    given (offline: no ImageNet backbone download); their class names are the weights' categories (Pascal VOC's
    21) unless ``num_classes`` says otherwise (then ``None``), their preprocessing the weights' resize (520)
    cropped to a square.

    ``builder_kwargs`` go to torchvision's builder (``aux_logits=False``, ``num_classes=10``...). Without
    weights the preprocessing and input size are still those of the architecture's default weights
    (Inception-v3: 342 → 299), read from torchvision's metadata. ``input_size=(C, H, W)`` crops to ``H x W``
    instead, after a resize in the weights' proportion (256 → 224 becomes 146 → 128 at 128 x 128)."""
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a torchvision model name (str), got {type(arch).__name__}")
    classification = list_models(module=torchvision.models)
    segmentation = segmentation_models()
    if arch not in classification and arch not in segmentation:
        raise ValueError(f"unknown torchvision classification model (or segmentation model) {arch!r}; e.g. alexnet, "
                         f"vgg16, resnet18, fcn_resnet50 "
                         f"(all: {', '.join(sorted(classification + segmentation))})")
    if arch in segmentation:
        builder_kwargs.setdefault("weights_backbone", None)
    w = _resolve_weights(arch, weights)
    builder = get_model_builder(arch)
    if w is None:
        model = builder(weights=None, **builder_kwargs)
        default = _default_weights(arch)
        if default is not None:
            transform, crop = _preprocessing(default.transforms())
        else:
            transform, crop = ImageNetTransform(), 224
        classes = imagenet_classes() if arch not in segmentation else _categories(default, builder_kwargs)
    else:
        fname = os.path.basename(w.url)
        target = Path(torch.hub.get_dir()) / "checkpoints" / fname
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            model = builder(weights=w, **builder_kwargs)
        except Exception as e:  # noqa: BLE001 - any download failure becomes one clear message
            if target.exists():
                raise
            raise RuntimeError(
                f"the {w} weights for {arch} are not on this machine and could not be downloaded ({e}). "
                f"Download {w.url} elsewhere and place it at {target} (TORCH_HOME={torch.hub.get_dir()}/..), "
                "then try again.") from None
        finally:
            socket.setdefaulttimeout(old)
        transform, crop = _preprocessing(w.transforms())
        classes = list(w.meta["categories"]) if arch not in segmentation else _categories(w, builder_kwargs)
    model.eval()
    if input_size is not None:
        transform, (h, w_) = _at_size(transform, input_size)
        return model, transform, classes, (3, h, w_), w
    return model, transform, classes, (3, crop, crop), w
