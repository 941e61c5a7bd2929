"""``proloc dry-run``: a profile's training runs and an estimate of their time on a device, without running them.

The estimate itself is ``proloc_lib.bench.estimate.dry_run``; this module reads the options and
prints its table (or its JSON).
"""

from __future__ import annotations

from proloc_lib.bench.common import REFERENCE_CSV, _write_json, default_reference_dir
from proloc_lib.bench.estimate import VISLOCAS_SIZES, dry_run
from proloc_lib.cli.common import CommandParser, count, prog
from proloc_lib.core.errors import UserError, cli_main


def _parser() -> CommandParser:
    p = CommandParser("dry-run", description="List a profile's training runs and estimate their time on this "
                      "device from a short timed probe (an upper bound at max_epochs); nothing is trained.")
    p.add_argument("--profile", default="full", help="profile name in configs/ (default: full)")
    p.add_argument("--device", default="auto",
                   help="device to probe: auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
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


@cli_main(prog("dry-run"))
def dry_run_command(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
              f"(batch {r['batch_size']}, ~{r['median_padded_width']} residues)  ~{r['estimated_seconds'] / 60:8.1f} min")
    print(f"estimated training time: {res['estimated_training_hours']:.2f} h on this device. {res['note']}")
    return 0
