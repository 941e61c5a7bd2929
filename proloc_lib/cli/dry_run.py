"""``proloc dry-run``: a profile's training runs and an estimate of their time, memory and disk, without running them.

Two estimates, both in ``proloc_lib.bench.estimate``: ``gpu_estimate`` models named GPU kinds
(T4, L4, A100, H100) from FLOPs, bytes and data-sheet figures, with no GPU (the default where no
CUDA device is present, or ``--gpu``); ``dry_run`` times a short probe on the device present
(``--device cuda`` on a GPU machine, ``--device cpu``). This module reads the options and
prints a table (or the JSON).
"""

from __future__ import annotations

from proloc_lib.bench.common import REFERENCE_CSV, _write_json, default_reference_dir
from proloc_lib.bench.estimate import GPU_KINDS, VISLOCAS_SIZES, dry_run, format_hours, gpu_estimate
from proloc_lib.cli.common import CommandParser, count, prog
from proloc_lib.core.errors import UserError, cli_main


def _parser() -> CommandParser:
    p = CommandParser("dry-run", description="List a profile's training runs and estimate their time (an upper "
                      "bound at max_epochs), peak GPU memory and disk before a GPU is rented: for named GPU kinds "
                      "from FLOPs, bytes and data-sheet figures, or by a short timed probe on the device present. "
                      "Nothing is trained.")
    p.add_argument("--profile", default="full", help="profile name in configs/ (default: full)")
    p.add_argument("--gpu", default=None, metavar="KIND",
                   help=f"estimate for a GPU kind without having it: {', '.join(GPU_KINDS)} or all (default: all "
                        "when no CUDA device is here; else the probe on the device)")
    p.add_argument("--device", default="auto",
                   help="device to probe: auto (CUDA when available, else the --gpu table), cpu (a probe on "
                        "this CPU), cuda or cuda:N (default: auto)")
    p.add_argument("--data-root", default=None,
                   help="folder of the stage outputs whose stage-01 tables give the sequence lengths "
                        "(default: $PROLOC_DATA_ROOT or data/)")
    p.add_argument("--reference", default=None,
                   help=f"folder with {REFERENCE_CSV}, or a CSV of that format, whose lengths are used when "
                        f"stage 01 has not run (default: {default_reference_dir()})")
    p.add_argument("--n-train", type=count, default=None,
                   help=f"training samples of the train split (default: {VISLOCAS_SIZES['train']}, the Vislocas "
                        "benchmark's; a configuration with train_on: train+val adds --n-val)")
    p.add_argument("--n-val", type=int, default=None,
                   help=f"validation samples per epoch (default: {VISLOCAS_SIZES['val']}, the Vislocas benchmark's)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--out", default=None, help="also write the JSON report to this file (default: none)")
    return p


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


@cli_main(prog("dry-run"))
def dry_run_command(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    gpu, note = args.gpu, ""
    if gpu is None and args.device != "cpu" and not _cuda_here():   # nothing to probe: the table of kinds
        gpu = "all"
        if args.device.startswith("cuda"):
            note = f"no CUDA device here for --device {args.device}: estimates for named GPU kinds instead\n"
    if gpu is not None:
        if gpu != "all" and gpu not in GPU_KINDS:
            raise UserError(f"--gpu: unknown GPU kind '{gpu}' (known: {', '.join(GPU_KINDS)}, or all)")
        try:
            res = gpu_estimate(args.profile, gpu, data_root=args.data_root, reference=args.reference,
                               n_train=args.n_train, n_val=args.n_val)
        except (FileNotFoundError, ValueError) as exc:   # unknown profile
            raise UserError(str(exc)) from None
        text = _write_json(res, args.out)
        print(text if args.json else note + gpu_table(res))
        return 0
    try:
        res = dry_run(args.profile, args.device, data_root=args.data_root, reference=args.reference,
                      n_train=args.n_train, n_val=args.n_val)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:   # unknown profile or device
        raise UserError(str(exc)) from None
    text = _write_json(res, args.out)
    if args.json:
        print(text)
        return 0
    print(f"profile {res['profile']} on {res['device']} ({res['device_name']}): {res['n_runs']} training runs, "
          f"{res['n_train']} training samples ({res['sample_counts']}), lengths from {res['lengths']}")
    for r in res["runs"]:
        print(f"  {r['run']:<40} seed {r['seed']}  {r['epochs_max']:>3} epochs x {r['steps_per_epoch']:>5} steps "
              f"(batch {r['batch_size']}, ~{r['median_padded_width']} residues)  "
              f"~{format_hours(r['estimated_seconds'] / 3600)}")
    print(f"estimated training time: {format_hours(res['estimated_training_hours'])} on this device (measured probe). "
          f"{res['note']}")
    return 0


def gpu_table(res: dict) -> str:
    """The GPU-kind estimate as a few aligned tables."""
    kinds = res["kinds"]
    counts: dict[str, int] = {}
    for r in res["runs"]:
        counts[r["run"]] = counts.get(r["run"], 0) + 1
    lines = [f"profile {res['profile']}: {res['n_runs']} training runs ("
             + ", ".join(f"{k} x{v}" for k, v in counts.items()) + f"), {res['n_train']} training samples, "
             f"lengths from {res['lengths']}",
             "Estimated for named GPUs without one: modelled from FLOPs, bytes and data-sheet figures "
             "(assumptions below); every run to max_epochs, an upper bound.", ""]
    rows = [("GPU", "training", "peak GPU memory", "Colab session (assumed)", "all in one session?",
             "smaller tier that fits")]
    for k, v in kinds.items():
        smaller = [t for t in v["tiers_that_fit"] if t != "the profile as it is"]
        rows.append((k, f"~{format_hours(v['hours'])}", f"{v['peak_memory_gib']:g} of {v['memory_gib']:g} GiB",
                     f"{v['colab_session_h']:g} h ({v['colab_tier'].split(',')[0]})",
                     "yes" if v["fits_one_session"] else ("no: memory" if not v["fits_memory"] else "no: time"),
                     "-" if v["fits_one_session"] else (smaller[0] if smaller else "none")))
    lines += _aligned(rows)
    lines += ["", "Per run (hours at max_epochs):"]
    seen, rows = set(), [("run", "runs", "epochs", "steps/epoch", "~width", "TFLOP", *kinds)]
    for r in res["runs"]:
        if r["run"] in seen:
            continue
        seen.add(r["run"])
        rows.append((r["run"], str(counts[r["run"]]), str(r["epochs_max"]), str(r["steps_per_epoch"]),
                     str(r["median_padded_width"]), f"{r['tflop_total']:g}",
                     *(format_hours(r["hours"][k]) for k in kinds)))
    lines += _aligned(rows)
    lines += ["", "Fewer seeds (hours):"]
    lines += _aligned([("tier", *kinds)] + [(t, *(format_hours(h[k]) for k in kinds)) for t, h in res["tiers"].items()])
    lines += ["", "Peak GPU memory, estimated: " + "; ".join(f"{k} {v:g} GiB" for k, v in
                                                             res["peak_memory_parts_gib"].items())
              + f"; + CUDA context {res['assumptions']['CUDA context (GiB)']:g} GiB (assumed)",
              f"Disk: ~{res['disk']['total_gb']:g} GB (" + ", ".join(f"{k} {v:g}" for k, v in res["disk"]["gb"].items())
              + f" GB); {res['disk']['basis']}",
              "Measured or counted here: " + "; ".join(res["measured"]) + ".",
              "Assumed: " + "; ".join(f"{k}: {v}" for k, v in res["assumptions"].items()
                                     if k not in ("colab sessions",)) + ".",
              "Colab sessions (assumed): "
              + "; ".join(f"{k} {v}" for k, v in res["assumptions"]["colab sessions"].items())
              + ". Fewer seeds: a copy of the profile with a shorter training.seeds list."]
    return "\n".join(lines)


def _aligned(rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
