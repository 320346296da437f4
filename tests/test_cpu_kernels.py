"""The AVX2 / two-thread re-run of the notebooks (``scripts/test``) really runs other CPU kernels.

``scripts/test`` runs the notebooks first in one-thread workers, then a second time with
``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2`` and two threads, so
that every checked number is shown to come out the same on an AVX2-only CPU and for another thread count. These tests check that the restriction takes: torch's dispatch
reports AVX2, and, on a CPU that has AVX-512, float32 results computed under it differ in their last bits from
the unrestricted ones (so the re-run is not the same computation twice).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

RESTRICT = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}

# float32 work whose rounding depends on the vector width: a long reduction, a convolution (oneDNN) and a
# matrix product; the digests of their bytes, and the dispatch torch reports
PROBE = r"""
import hashlib, json, torch
torch.manual_seed(0)
x = torch.randn(1 << 20)
img = torch.randn(8, 16, 32, 32)
w = torch.randn(32, 16, 3, 3)
a, b = torch.randn(257, 513), torch.randn(513, 129)
out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
for name, t in (("sum", x.sum()), ("conv", torch.nn.functional.conv2d(img, w, padding=1)), ("matmul", a @ b)):
    out[name] = hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
print(json.dumps(out))
"""


def probe(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in RESTRICT}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_this_process_runs_the_kernels_its_environment_asks_for():
    import torch
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
        assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    if os.environ.get("OMP_NUM_THREADS") == "1":
        assert torch.get_num_threads() == 1


def test_the_avx2_restriction_changes_the_kernels():
    restricted = probe(RESTRICT)
    assert restricted["capability"] == "AVX2"
    assert restricted["threads"] == 2
    free = probe({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"})   # the same thread count: only the kernels differ
    if free["capability"] != "AVX512":
        pytest.skip(f"this CPU runs {free['capability']} kernels already: the re-run is the normal run here")
    differs = [k for k in ("sum", "conv", "matmul") if free[k] != restricted[k]]
    print(f"AVX2 vs {free['capability']}: {differs or 'none'} of sum, conv, matmul differ in their bits")
    assert differs, "the AVX2 restriction gave bit-identical float32 results: it did not change the kernels"
