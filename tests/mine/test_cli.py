"""The command line: a clear error and exit status 2 for bad input, the report of skipped files, --html."""
import os
import subprocess
import sys
from pathlib import Path

import zfwidgets as zf

REPO = Path(__file__).resolve().parents[2]


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "zfwidgets.mine", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_errors_report_and_site(tmp_path):
    r = _run("zfnet-fashion", "fashion-mnist:test", "--layers", "conv9", "-o", str(tmp_path / "g.safetensors"))
    assert r.returncode == 2 and "unknown layer 'conv9'" in r.stderr and not (tmp_path / "g.safetensors").exists()
    data = tmp_path / "data"
    data.mkdir()
    for i, s in enumerate(zf.samples()[:6]):
        s.image.save(data / f"{i}.png")
    (data / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    r = _run("zfnet-fashion", str(data), "--layers", "conv1", "-k", "2", "-o", str(tmp_path / "g.safetensors"),
             "--html", str(tmp_path / "site"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "1 images could not be decoded" in r.stderr and "skipped zz-broken.jpg" in r.stderr
    assert (tmp_path / "site" / "index.html").exists() and (tmp_path / "site" / "conv1.html").exists()
    g = zf.Gallery.load(tmp_path / "g.safetensors")
    assert g.count == 6 and g.skipped[0]["id"] == "zz-broken.jpg"
    r = _run("zfnet-fashion", str(data), "--strict", "-o", str(tmp_path / "h.safetensors"), "--no-progress")
    assert r.returncode == 2 and "zz-broken.jpg" in r.stderr
