"""torchrun --nproc_per_node=2 (gloo, 127.0.0.1, one thread each) writes the same gallery file, byte for byte,
as one process."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
JOB = ["zfnet-fashion", "fashion-mnist:test", "--layers", "conv1,conv2,conv5", "-k", "4", "--limit", "900",
       "--batch-size", "32", "--threads", "1", "--chunk", "8", "--no-progress"]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    r = subprocess.run([sys.executable, "-m", "zfwidgets.mine", *JOB, "-o", str(one)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                        "--master_addr=127.0.0.1", f"--master_port={_port()}", "-m", "zfwidgets.mine", *JOB,
                        "-o", str(two), "--checkpoint", str(tmp_path / "ck")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["rank0-of-2.safetensors", "rank1-of-2.safetensors"]
    assert two.read_bytes() == one.read_bytes()
