"""``proloc bench-images``: image decode and extraction speed on a real HPA image."""

from __future__ import annotations

import json
from pathlib import Path

from proloc_lib.bench.images import default_sample_image
from proloc_lib.bench.images import run as image_benchmark
from proloc_lib.cli.common import CommandParser, prog
from proloc_lib.core import runtime
from proloc_lib.core.errors import UserError, cli_main
from proloc_lib.core.fileio import write_text
from proloc_lib.features import image


@cli_main(prog("bench-images"))
def bench_images_command(argv: list[str] | None = None) -> int:
    p = CommandParser("bench-images", description="Image decode and extraction speed on a real HPA image "
                      "(decode threads, JPEG draft decoding, ViT forward); prints JSON.")
    p.add_argument("--profile", default="demo",
                   help="profile whose image encoder and decode settings to use (default: demo)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--image", default=None, help=f"JPEG decoded over and over (default: {default_sample_image()})")
    p.add_argument("--n", type=int, default=32, help="images per timing (default: 32)")
    p.add_argument("--workers", default="auto",
                   help="decode threads, a number or auto (default: auto, the profile's setting or the usable CPUs)")
    p.add_argument("--no-draft", action="store_true",
                   help="decode JPEGs at full size (default: the profile's embeddings.jpeg_draft)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: the profile's)")
    p.add_argument("--out", default=None, help="also write the JSON to this file (default: stdout only)")
    args = p.parse_args(argv)
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    try:
        workers = args.workers if args.workers == "auto" else image.decode_workers(int(args.workers))
        device = runtime.resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:   # a bad --workers / --device, CUDA not available
        raise UserError(str(exc)) from None
    try:
        res = image_benchmark(profile=args.profile, device=device, image=args.image, n=args.n, workers=workers,
                  jpeg_draft=False if args.no_draft else None, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    text = json.dumps(res, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text + "\n")
    print(text)
    return 0
