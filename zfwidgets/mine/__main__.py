"""``python -m zfwidgets.mine MODEL DATA -o gallery.safetensors`` (console script ``zfwidgets-mine``).

Examples:
    python -m zfwidgets.mine zfnet-fashion fashion-mnist:train -o top9.safetensors --checkpoint ck/
    python -m zfwidgets.mine zfnet-fashion fashion-mnist:train -o top9.safetensors --checkpoint ck/ --resume
    torchrun --standalone --nproc_per_node=2 -m zfwidgets.mine alexnet ~/photos --weights DEFAULT \\
        --layers conv5 -o alexnet.safetensors --workers 2
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zfwidgets-mine", description="Mine a data set for every map's top-k images "
                                "(ZF Fig. 2) and write a gallery file. Runs under torchrun too.")
    p.add_argument("model", help="a bundled model (zfnet-fashion, allconv-fashion) or a torchvision model name")
    p.add_argument("data", help="a folder of images (ImageFolder or flat, recursive), fashion-mnist:train or "
                                "fashion-mnist:test")
    p.add_argument("-o", "--out", required=True, help="the gallery file to write (safetensors)")
    p.add_argument("--weights", default=None, help="torchvision weights (DEFAULT, IMAGENET1K_V1...); default random")
    p.add_argument("--layers", default=None, help="comma-separated layer names (default: every conv layer)")
    p.add_argument("-k", type=int, default=9, help="images per map (default 9)")
    p.add_argument("--rule", default="deconvnet", choices=["deconvnet", "guided", "gradient"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader decoding workers (default 0)")
    p.add_argument("--limit", type=int, default=None, help="mine only the first N images")
    p.add_argument("--checkpoint", default=None, help="folder for checkpoints (one file per rank)")
    p.add_argument("--every", type=int, default=4096, help="images between checkpoints (default 4096)")
    p.add_argument("--resume", action="store_true", help="go on from the checkpoint in --checkpoint")
    p.add_argument("--strict", action="store_true", help="stop at an image that cannot be decoded (default: skip it)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--device", default=None, help="cpu or cuda (under torchrun: the GPU of each rank's LOCAL_RANK)")
    p.add_argument("--chunk", type=int, default=32, help="images per recorded forward in the projection phase")
    p.add_argument("--no-projections", action="store_true", help="values, images and positions only")
    p.add_argument("--html", default=None, help="also write a static site to this folder")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .miner import mine
    try:
        g = mine(args.model, args.data, args.layers, k=args.k, rule=args.rule, weights=args.weights, out=args.out,
                 batch_size=args.batch_size, workers=args.workers, limit=args.limit, checkpoint=args.checkpoint,
                 checkpoint_every=args.every, resume=args.resume, strict=args.strict,
                 progress=not args.no_progress, projections=not args.no_projections, chunk=args.chunk,
                 threads=args.threads, device=args.device)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"zfwidgets-mine: error: {e}", file=sys.stderr)
        return 2
    if g is None:  # not rank 0
        return 0
    if args.html:
        g.to_html(args.html)
    n = len(g.skipped)
    print(f"zfwidgets-mine: {g.count} images, {len(g.layers)} layers, top-{g.k} {g.rule} -> {args.out} in "
          f"{g.job_seconds:.2f} s (pass {g.pass_seconds:.2f} s; start-up not counted; "
          + ", ".join(f"{k} {v:.2f} s" for k, v in g.timings.items()) + ")"
          + (f"; {n} images could not be decoded and were skipped:" if n else ""), file=sys.stderr)
    for e in g.skipped[:20]:
        print(f"  skipped {e['id']}: {e['error']}", file=sys.stderr)
    if n > 20:
        print(f"  ... and {n - 20} more (gallery.skipped lists them all)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
