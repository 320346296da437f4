"""Resumable: the CLI killed with SIGKILL at random points three times, then --resume, writes the same gallery
file, byte for byte, as an uninterrupted run; checkpoints of another job or damaged ones are refused."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from zfwidgets.mine import mine

REPO = Path(__file__).resolve().parents[2]
JOB = ["zfnet-fashion", "fashion-mnist:test", "--layers", "conv1,conv3,conv5", "-k", "5", "--limit", "2400",
       "--batch-size", "40", "--threads", "1", "--no-progress"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return env


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "zfwidgets.mine", *JOB, *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_sigkill_three_times_then_resume_gives_the_same_gallery(tmp_path):
    ref = tmp_path / "ref.safetensors"
    p = _cli("-o", str(ref))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()

    ck, got = tmp_path / "ck", tmp_path / "got.safetensors"
    rng = random.Random(16)
    kills = []
    for n in range(3):
        before = (ck / "rank0-of-1.safetensors").stat().st_mtime_ns if (ck / "rank0-of-1.safetensors").exists() else 0
        p = _cli("-o", str(got), "--checkpoint", str(ck), "--every", "80", *(["--resume"] if n else []))
        deadline = time.monotonic() + 120
        f = ck / "rank0-of-1.safetensors"
        while time.monotonic() < deadline and (not f.exists() or f.stat().st_mtime_ns == before):
            if p.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))   # somewhere in the pass: between or inside checkpoint writes
        finished = p.poll() is not None
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        kills.append("finished before the kill" if finished else "killed")
        assert not got.exists() or finished, "a killed run left a gallery file"
    p = _cli("-o", str(got), "--checkpoint", str(ck), "--every", "80", "--resume")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
    assert kills.count("killed") >= 2, kills
    assert got.read_bytes() == ref.read_bytes()


class _Interrupted(Exception):
    pass


def test_checkpoints_of_another_job_or_damaged_are_refused(tmp_path, lens, monkeypatch):
    ck = tmp_path / "ck"
    import zfwidgets.mine.miner as miner
    real, batches = miner._offer, []

    def interrupted_after_two_batches(*a, **k):   # a run that ends early: its checkpoint after 80 images stays
        if len(batches) == 2:
            raise _Interrupted
        batches.append(1)
        return real(*a, **k)
    monkeypatch.setattr(miner, "_offer", interrupted_after_two_batches)
    with pytest.raises(_Interrupted):
        mine(lens, "fashion-mnist:test", ["conv2"], k=3, limit=120, batch_size=40, checkpoint=ck,
             checkpoint_every=40, progress=False, projections=False)
    monkeypatch.undo()
    f = ck / "rank0-of-1.safetensors"
    assert f.exists()
    with pytest.raises(ValueError, match="another job.*k"):
        mine(lens, "fashion-mnist:test", ["conv2"], k=4, limit=120, batch_size=40, checkpoint=ck, resume=True,
             progress=False, projections=False)
    whole = mine(lens, "fashion-mnist:test", ["conv2"], k=3, limit=120, batch_size=40, progress=False,
                 projections=False)
    resumed = mine(lens, "fashion-mnist:test", ["conv2"], k=3, limit=120, batch_size=40, checkpoint=ck,
                   resume=True, progress=False, projections=False)
    assert all(torch.equal(whole.tensors("conv2")[key], resumed.tensors("conv2")[key]) for key in whole.tensors("conv2"))
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF                    # one flipped byte in the tensors
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        mine(lens, "fashion-mnist:test", ["conv2"], k=3, limit=120, batch_size=40, checkpoint=ck, resume=True,
             progress=False, projections=False)
    f.write_bytes(bytes(data[:50]))     # truncated
    with pytest.raises(ValueError, match="not readable"):
        mine(lens, "fashion-mnist:test", ["conv2"], k=3, limit=120, batch_size=40, checkpoint=ck, resume=True,
             progress=False, projections=False)
