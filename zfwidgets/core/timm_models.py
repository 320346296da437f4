"""Building timm CNNs (``pip install "zfwidgets[timm]"``) with preprocessing and class names from timm's metadata."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["build_timm"]


def _timm():
    try:
        import timm
    except ImportError:
        raise ImportError('Lens.from_timm needs timm: pip install "zfwidgets[timm]" (or pip install timm)') from None
    return timm


def build_timm(name: str, weights=None, input_size=None, **create_kwargs):
    """``(model in eval mode, transform, class names or None, input size, mean, std)`` for timm's ``name``.

    ``weights``: ``None`` (random initialisation), the path of a checkpoint file (``.safetensors``, ``.pth``,
    ``.bin``: timm's ``checkpoint_path``), a state dict, or ``"DEFAULT"`` / ``True`` (timm's pretrained
    weights, from the Hugging Face cache or downloaded). The transform is timm's evaluation transform for the
    model's data config (resize, centre crop, normalise), at ``input_size`` when given. Class names: the
    ImageNet subset timm infers from the classifier (``imagenet-1k``...), else ``None``.
    """
    timm = _timm()
    from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_model_data_config
    if not isinstance(name, str):
        raise TypeError(f"name must be a timm model name (str), got {type(name).__name__}")
    if not timm.is_model(name):
        import difflib
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=8, cutoff=0.7)
        raise ValueError(f"unknown timm model {name!r}" + (f"; similar names: {', '.join(close)}" if close else
                                                            "; timm.list_models() lists them"))
    if "pretrained" in create_kwargs or "checkpoint_path" in create_kwargs:
        raise TypeError("give the weights as weights=... (None, a file path, a state dict or 'DEFAULT')")
    state = None
    if weights is None:
        kwargs = {"pretrained": False}
    elif weights is True or (isinstance(weights, str) and weights == "DEFAULT"):
        kwargs = {"pretrained": True}
    elif isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist (weights= takes a checkpoint path, "
                                    "'DEFAULT' for timm's pretrained weights, a state dict or None)")
        kwargs = {"pretrained": False, "checkpoint_path": str(path)}
    elif isinstance(weights, dict):
        kwargs, state = {"pretrained": False}, weights
    else:
        raise TypeError(f"weights must be None, 'DEFAULT', a checkpoint path or a state dict, got "
                        f"{type(weights).__name__}")
    try:
        model = timm.create_model(name, **kwargs, **create_kwargs)
    except (OSError, RuntimeError) as e:
        if not kwargs["pretrained"]:
            raise
        raise RuntimeError(f"timm's pretrained weights for {name} are not on this machine and could not be "
                           f"downloaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Download "
                           "the checkpoint elsewhere and pass its path: Lens.from_timm(name, weights='file.safetensors')"
                           ) from None
    if state is not None:
        model.load_state_dict(state)
    model.eval()
    cfg = resolve_model_data_config(model)
    if input_size is not None:
        cfg["input_size"] = tuple(int(s) for s in input_size)
    transform = create_transform(**cfg, is_training=False)
    subset = infer_imagenet_subset(model)
    classes = None
    if subset is not None:
        # timm's descriptions are "tench, Tinca tinca": the first name, as torchvision's categories give it
        classes = [d.split(",")[0] for d in ImageNetInfo(subset).label_descriptions()]
    return model, transform, classes, tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"])
