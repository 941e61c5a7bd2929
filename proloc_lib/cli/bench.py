"""``proloc bench``, ``bench-training``, ``bench-loader``, ``bench-seeds``, ``profile-training`` and ``dry-run``."""

from __future__ import annotations

import argparse
import sys

from proloc_lib.bench.common import REFERENCE_CSV, _write_json, default_reference_dir
from proloc_lib.bench.estimate import dry_run
from proloc_lib.bench.store import run as store_benchmark
from proloc_lib.bench.training import (
    loader_only_throughput,
    profile_training,
    seeds_throughput,
    training_throughput,
)
from proloc_lib.core.network import OfflineError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proloc_lib.benchmarks",
        description="Feature-store, sequence-embedding and training-loop benchmarks, and the dry run (offline).")
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("bench", help="store size, padded vs bucketed throughput, peak memory; prints JSON")
    b.add_argument("--reference", default=None,
                   help=f"folder with {REFERENCE_CSV}, or a CSV of that format (default: {default_reference_dir()})")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    b.add_argument("--profile", default="demo", help="profile whose sequence encoder and token budget to use")
    b.add_argument("--full-model", action="store_true",
                   help="configs/full.yaml's ProtT5-XL (needs the network or a local HF cache; best on a GPU)")
    b.add_argument("--token-budget", type=int, default=None, help="residues per bucket (default: the profile's)")
    b.add_argument("--batch-size", type=_count, default=8, help="batch size of the padded (authors') mode")
    b.add_argument("--repeats", type=_count, default=2, help="timed repeats per mode (best is kept)")
    b.add_argument("--no-isolate", action="store_true", help="run both modes in this process (faster, rougher memory)")
    b.add_argument("--cache-dir", default=None, help="model / tiny-vocabulary cache folder")
    b.add_argument("--out", default=None, help="also write the JSON to this file")
    t = sub.add_parser("bench-training",
                       help="authors' vs corrected training loop: samples/s, peak memory; prints JSON")
    _shape_options(t, profile="demo")
    t.add_argument("--n-samples", type=_count, default=96, help="image rows sampled from the reference set")
    t.add_argument("--epochs", type=_count, default=1, help="timed epochs (the last one is reported)")
    t.add_argument("--batch-size", type=_count, default=32, help="batch size of the corrected loop")
    t.add_argument("--n-blocks", type=int, default=None, help="override n_blocks for both loops")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=_count, default=None, help="CPU threads per loop (default: torch's)")
    t.add_argument("--no-isolate", action="store_true", help="run both loops in this process (rougher memory)")
    t.add_argument("--no-warmup", action="store_true", help="skip the untimed one-step warm-up")
    t.add_argument("--out", default=None, help="also write the JSON to this file")
    lo = sub.add_parser("bench-loader", help="loader-only samples/s at the profile's shapes (no model); prints JSON")
    _shape_options(lo, profile="full")
    lo.add_argument("--n-samples", type=_count, default=512)
    lo.add_argument("--threads", type=_count, default=None)
    lo.add_argument("--out", default=None)
    d = sub.add_parser("dry-run", help="list a profile's training runs and estimate their time on this device")
    d.add_argument("--profile", default="full")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    d.add_argument("--data-root", default=None)
    d.add_argument("--reference", default=None)
    d.add_argument("--n-train", type=_count, default=None, help="training samples (default: stage 01's, else Vislocas')")
    d.add_argument("--n-val", type=int, default=None)
    d.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    d.add_argument("--out", default=None)
    se = sub.add_parser("bench-seeds", help="several seeds at once against one seed (samples/s over all seeds)")
    _shape_options(se, profile="full")
    se.add_argument("--config", default="authors", choices=["corrected", "authors"])
    se.add_argument("--seeds", type=_count, default=5, help="seeds trained together (default 5, the full profile's)")
    se.add_argument("--n-samples", type=_count, default=96)
    se.add_argument("--epochs", type=_count, default=1)
    se.add_argument("--out", default=None)
    pr = sub.add_parser("profile-training", help="torch.profiler of a few training steps at the profile's shapes")
    _shape_options(pr, profile="full")
    pr.add_argument("--config", default="corrected", choices=["corrected", "authors"])
    pr.add_argument("--steps", type=_count, default=6)
    pr.add_argument("--batch-size", type=_count, default=None, help="override the configuration's batch size")
    pr.add_argument("--trace", default=None, help="also write a Chrome trace here")
    pr.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.command == "dry-run":
        return _dry_run_cli(args)
    if args.command not in ("bench", "bench-training", "bench-loader", "profile-training", "bench-seeds"):
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "bench-seeds":
            res = seeds_throughput(reference=args.reference, profile=args.profile, device=args.device,
                                   config_name=args.config, n_seeds=args.seeds, n_samples=args.n_samples,
                                   epochs=args.epochs)
        elif args.command == "profile-training":
            res = profile_training(reference=args.reference, profile=args.profile, device=args.device,
                                   config_name=args.config, steps=args.steps, batch_size=args.batch_size,
                                   trace=args.trace)
        elif args.command == "bench-loader":
            res = loader_only_throughput(reference=args.reference, profile=args.profile, device=args.device,
                                         n_samples=args.n_samples, threads=args.threads)
        elif args.command == "bench-training":
            res = training_throughput(reference=args.reference, profile=args.profile, device=args.device,
                                      n_samples=args.n_samples, epochs=args.epochs, seed=args.seed,
                                      batch_size_corrected=args.batch_size,
                                      size_overrides={"n_blocks": args.n_blocks} if args.n_blocks else None,
                                      isolate=not args.no_isolate, warmup=not args.no_warmup,
                                      threads=args.threads)
        else:
            res = store_benchmark(reference=args.reference, device=args.device, profile=args.profile,
                      token_budget=args.token_budget, batch_size_padded=args.batch_size, repeats=args.repeats,
                      isolate=not args.no_isolate, full_model=args.full_model, cache_dir=args.cache_dir)
    except (OfflineError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = _write_json(res, args.out)
    print(text)
    return 0


def _count(text: str) -> int:
    """An argparse type: a whole number >= 1 (a count of samples, epochs, seeds, steps or threads)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"give a whole number >= 1, not {text!r}")
    return value


def _shape_options(p: argparse.ArgumentParser, *, profile: str) -> None:
    """The options every benchmark at a profile's shapes takes: the reference set, the profile, the device."""
    p.add_argument("--reference", default=None,
                   help=f"folder with {REFERENCE_CSV}, or a CSV of that format (default: {default_reference_dir()})")
    p.add_argument("--profile", default=profile,
                   help=f"profile whose encoder widths and training.base sizes to use (default: {profile})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def _dry_run_cli(args) -> int:
    try:
        res = dry_run(args.profile, args.device, data_root=args.data_root, reference=args.reference,
                      n_train=args.n_train, n_val=args.n_val)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"python -m proloc_lib.benchmarks dry-run: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    text = _write_json(res, args.out)
    if args.json:
        print(text)
        return 0
    print(f"profile {res['profile']} on {res['device']} ({res['device_name']}): {res['n_runs']} training runs, "
          f"{res['n_train']} training samples ({res['sample_counts']}), lengths from {res['lengths']}")
    for r in res["runs"]:
        print(f"  {r['run']:<40} seed {r['seed']}  {r['epochs_max']:>3} epochs x {r['steps_per_epoch']:>5} steps "
              f"(batch {r['batch_size']}, ~{r['median_padded_width']} residues)  ~{r['estimated_seconds'] / 60:8.1f} min")
    print(f"estimated training time: {res['estimated_training_hours']:.2f} h on this device. {res['note']}")
    return 0
