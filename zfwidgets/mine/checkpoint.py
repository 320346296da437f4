"""Atomic files: write to a temporary file beside the target, flush it to disk, then ``os.replace`` it over
the target, so a reader sees the old file or the new one, never half of one. Checkpoints carry a SHA-256
of their tensors and the job's fingerprint, checked on reading.

Example:
    >>> import tempfile, os; path = os.path.join(tempfile.mkdtemp(), "rank0.safetensors")
    >>> save_checkpoint(path, {"values": torch.arange(3.0)}, {"next_batch": 12}, {"model": "zfnet-fashion"})
    >>> tensors, info = load_checkpoint(path, {"model": "zfnet-fashion"}); tensors["values"].tolist(), info
    ([0.0, 1.0, 2.0], {'next_batch': 12})
    >>> load_checkpoint(path, {"model": "alexnet"})     # another job's checkpoint is refused
    Traceback (most recent call last):
    ValueError: checkpoint ... belongs to another job (it differs in model); use another checkpoint folder or delete it
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "tensor_digest"]

CHECKPOINT_FORMAT = "zfwidgets-mine-checkpoint"


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)`` then move the finished file to ``path`` in one step (``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())      # mkstemp's file is private; the result gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # the rename itself reaches the disk with the folder
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def tensor_digest(tensors: dict) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path, tensors: dict, info: dict, fingerprint: dict) -> None:
    from safetensors.torch import save_file
    meta = {"format": CHECKPOINT_FORMAT, "fingerprint": json.dumps(fingerprint, sort_keys=True),
            "info": json.dumps(info, sort_keys=True), "sha256": tensor_digest(tensors)}
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta))


def load_checkpoint(path, fingerprint: dict):
    """``(tensors, info)`` of a complete checkpoint made for the same job; ``ValueError`` otherwise."""
    from safetensors.torch import load_file
    from safetensors import safe_open
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged file: say so
        raise ValueError(f"checkpoint {path} is not readable ({type(e).__name__}: {e}); delete it to start over") \
            from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a zfwidgets miner checkpoint")
    if meta.get("sha256") != tensor_digest(tensors):
        raise ValueError(f"checkpoint {path} is damaged (its checksum does not match); delete it to start over")
    try:
        theirs, info = json.loads(meta["fingerprint"]), json.loads(meta["info"])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {path} has unreadable metadata ({e})") from None
    mine = json.loads(json.dumps(fingerprint, sort_keys=True))
    if theirs != mine:
        diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
        raise ValueError(f"checkpoint {path} belongs to another job (it differs in {', '.join(diff)}); use another "
                         "checkpoint folder or delete it")
    return tensors, info
