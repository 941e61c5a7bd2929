"""``proloc bench``, ``bench-training``, ``bench-loader``, ``bench-seeds`` and ``profile-training``:
benchmarks that print one JSON object on stdout (progress goes to stderr)."""

from __future__ import annotations

import argparse

from proloc_lib.bench.common import REFERENCE_CSV, _write_json, default_reference_dir
from proloc_lib.bench.store import run as store_benchmark
from proloc_lib.bench.training import (
    SEED_MODES,
    loader_only_throughput,
    profile_training,
    seeds_throughput,
    training_throughput,
)
from proloc_lib.cli.common import CommandParser, count, prog
from proloc_lib.core.errors import RunFailed, cli_main
from proloc_lib.core.network import OfflineError

EXIT_CODES = ("exit codes: 0 ok (the JSON is on stdout); 1 the reference set or a model could not be read "
              "(missing file, offline); 2 bad arguments; 130 interrupted. --debug shows the traceback of an error.")
DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N (default: auto)"


def _parser(command: str, description: str) -> CommandParser:
    return CommandParser(command, description=description, epilog=EXIT_CODES)


def _reference_option(p: CommandParser) -> None:
    p.add_argument("--reference", default=None,
                   help=f"folder with {REFERENCE_CSV}, or a CSV of that format (default: {default_reference_dir()})")


def _shape_options(p: CommandParser, *, profile: str) -> None:
    """The options every benchmark at a profile's shapes takes: the reference set, the profile, the device."""
    _reference_option(p)
    p.add_argument("--profile", default=profile,
                   help=f"profile whose encoder widths and training.base sizes to use (default: {profile})")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def _out_option(p: CommandParser) -> None:
    p.add_argument("--out", default=None, help="also write the JSON to this file (default: stdout only)")


def _report(run, out: str | None) -> int:
    """Run one benchmark and print its JSON; a missing reference set or model is a failed run (exit 1)."""
    try:
        res = run()
    except (OfflineError, FileNotFoundError) as exc:
        raise RunFailed(str(exc)) from None
    print(_write_json(res, out))
    return 0


@cli_main(prog("bench"))
def bench_command(argv: list[str] | None = None) -> int:
    p = _parser("bench", "Feature store size, padded vs bucketed sequence-embedding throughput and peak memory "
                "on the reference set; prints JSON.")
    _reference_option(p)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--profile", default="demo",
                   help="profile whose sequence encoder and token budget to use (default: demo)")
    p.add_argument("--full-model", action="store_true",
                   help="use configs/full.yaml's ProtT5-XL (needs the network or a local HF cache; best on a GPU)")
    p.add_argument("--token-budget", type=int, default=None,
                   help="residues per bucket of the bucketed mode (default: the profile's embeddings.token_budget)")
    p.add_argument("--batch-size", type=count, default=8, help="batch size of the padded (authors') mode (default: 8)")
    p.add_argument("--repeats", type=count, default=2, help="timed repeats per mode; the best is kept (default: 2)")
    p.add_argument("--no-isolate", action="store_true",
                   help="run both modes in this process (faster, rougher memory figures; default: one process each)")
    p.add_argument("--cache-dir", default=None,
                   help="model and tiny-vocabulary cache folder (default: the Hugging Face cache)")
    _out_option(p)
    args = p.parse_args(argv)
    return _report(lambda: store_benchmark(
        reference=args.reference, device=args.device, profile=args.profile, token_budget=args.token_budget,
        batch_size_padded=args.batch_size, repeats=args.repeats, isolate=not args.no_isolate,
        full_model=args.full_model, cache_dir=args.cache_dir), args.out)


@cli_main(prog("bench-training"))
def bench_training_command(argv: list[str] | None = None) -> int:
    p = _parser("bench-training", "The authors' training loop against the corrected one on random features at "
                "the profile's shapes: samples/s and peak memory; prints JSON.")
    _shape_options(p, profile="demo")
    p.add_argument("--n-samples", type=count, default=96,
                   help="image rows sampled from the reference set (default: 96)")
    p.add_argument("--epochs", type=count, default=1, help="timed epochs; the last one is reported (default: 1)")
    p.add_argument("--batch-size", type=count, default=32, help="batch size of the corrected loop (default: 32)")
    p.add_argument("--n-blocks", type=int, default=None,
                   help="transformer blocks of both loops' models (default: the profile's training.base)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled rows and the models (default: 0)")
    p.add_argument("--threads", type=count, default=None, help="CPU threads per loop (default: torch's)")
    p.add_argument("--no-isolate", action="store_true",
                   help="run both loops in this process (rougher memory figures; default: one process each)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed one-step warm-up (default: warm up)")
    p.add_argument("--capture-step", default="off", choices=["off", "cuda", "always"],
                   help="the authors loop's fixed-shape step compiled once (CUDA graphs on a GPU); give --epochs 2 "
                        "or more to leave compilation out of the reported epoch (default: off)")
    _out_option(p)
    args = p.parse_args(argv)
    return _report(lambda: training_throughput(
        reference=args.reference, profile=args.profile, device=args.device, n_samples=args.n_samples,
        epochs=args.epochs, seed=args.seed, batch_size_corrected=args.batch_size,
        size_overrides={"n_blocks": args.n_blocks} if args.n_blocks else None,
        isolate=not args.no_isolate, warmup=not args.no_warmup, threads=args.threads,
        capture_step=args.capture_step), args.out)


@cli_main(prog("bench-loader"))
def bench_loader_command(argv: list[str] | None = None) -> int:
    p = _parser("bench-loader", "The corrected loop's data loader alone (no model) at the profile's shapes: "
                "samples/s delivered to the device; prints JSON.")
    _shape_options(p, profile="full")
    p.add_argument("--n-samples", type=count, default=512,
                   help="image rows sampled from the reference set (default: 512)")
    p.add_argument("--threads", type=count, default=None, help="CPU threads (default: torch's)")
    _out_option(p)
    args = p.parse_args(argv)
    return _report(lambda: loader_only_throughput(
        reference=args.reference, profile=args.profile, device=args.device, n_samples=args.n_samples,
        threads=args.threads), args.out)


@cli_main(prog("bench-seeds"))
def bench_seeds_command(argv: list[str] | None = None) -> int:
    p = _parser("bench-seeds", "Several seeds trained at once against one seed, on random features at the "
                "profile's shapes: samples/s over all seeds; prints JSON.")
    _shape_options(p, profile="full")
    p.add_argument("--config", default="authors", choices=["corrected", "authors"],
                   help="training configuration to run (default: authors, the published loop)")
    p.add_argument("--seeds", type=count, default=5,
                   help="seeds trained together (default: 5, the full profile's)")
    p.add_argument("--n-samples", type=count, default=96,
                   help="image rows sampled from the reference set (default: 96)")
    p.add_argument("--epochs", type=count, default=2,
                   help="epochs per measurement; the last one is reported, so 2 or more leave compilation "
                        "out (default: 2)")
    p.add_argument("--modes", type=_seed_modes, default=["eager"], metavar="eager,stacked,...",
                   help=f"how the seeds step, each measured: {', '.join(SEED_MODES)} (stack_seeds and "
                        "capture_step of the configuration; comma-separated; default: eager)")
    _out_option(p)
    args = p.parse_args(argv)
    return _report(lambda: seeds_throughput(
        reference=args.reference, profile=args.profile, device=args.device, config_name=args.config,
        n_seeds=args.seeds, n_samples=args.n_samples, epochs=args.epochs, modes=args.modes), args.out)


def _seed_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in SEED_MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {unknown or text!r}; choose from {', '.join(SEED_MODES)}")
    return modes


@cli_main(prog("profile-training"))
def profile_training_command(argv: list[str] | None = None) -> int:
    p = _parser("profile-training", "torch.profiler of a few training steps at the profile's shapes (random "
                "features): the top operators by self time and the attention kernels that ran; prints JSON.")
    _shape_options(p, profile="full")
    p.add_argument("--config", default="corrected", choices=["corrected", "authors"],
                   help="training configuration to profile (default: corrected)")
    p.add_argument("--steps", type=count, default=6, help="profiled training steps after the warm-up (default: 6)")
    p.add_argument("--batch-size", type=count, default=None,
                   help="batch size (default: the configuration's)")
    p.add_argument("--trace", default=None, help="also write a Chrome trace to this file (default: none)")
    _out_option(p)
    args = p.parse_args(argv)
    return _report(lambda: profile_training(
        reference=args.reference, profile=args.profile, device=args.device, config_name=args.config,
        steps=args.steps, batch_size=args.batch_size, trace=args.trace), args.out)
