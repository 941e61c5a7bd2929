"""``proloc extract`` and ``proloc merge``: feature stores, sharded across machines or GPUs."""

from __future__ import annotations

import os
import sys

import torch

from proloc_lib.cli.common import CommandParser, prog
from proloc_lib.core import manifest, paths, runtime
from proloc_lib.core.errors import RunFailed, UserError, cli_main
from proloc_lib.core.locks import FolderLock
from proloc_lib.core.network import OfflineError
from proloc_lib.features.store import merge_stores, parse_shard
from proloc_lib.profiles import loader as profiles
from proloc_lib.stages.common import check_seed
from proloc_lib.stages.embeddings import embed_image_stage, embed_sequence_stage

# -- command line ---------------------------------------------------------------------------------
EXIT_CODES = """exit codes: 0 done; 1 some items could not be embedded (listed in the store's failures.json)
or merge skipped bad shards; 2 bad arguments, unknown profile, missing or wrong store/input files;
130 interrupted. --debug shows the traceback of an error."""


def _print_repairs(what: str, report: dict) -> None:
    for p in report.get("repaired") or []:
        where = f"; moved to {p['moved_to']}" if p.get("moved_to") else ""
        print(f"{what}: bad shard {p['shard']}: {p['problem']}{where}; its items are embedded again")


def _load_profile(name: str) -> dict:

    try:
        return profiles.load_profile(name)
    except UserError:
        raise
    except (FileNotFoundError, ValueError, TypeError, OSError) as exc:
        raise UserError(f"profile '{name}': {exc}") from None


@cli_main(prog("merge"))
def merge_command(argv: list[str] | None = None) -> int:
    p = CommandParser("merge", epilog=EXIT_CODES,
                      description="Join feature stores written on several machines (or shards) into one.")
    p.add_argument("dest", help="store folder to merge into (created when missing)")
    p.add_argument("sources", nargs="+", help="store folders to copy from; bad shards are reported and skipped")
    args = p.parse_args(argv)
    store = merge_stores(args.sources, args.dest)
    print(f"merged {len(args.sources)} stores into {store.path}: {len(store)} items")
    for problem in store.problems:
        print(f"merge: bad shard {problem['shard']}: {problem['problem']}", file=sys.stderr)
    if store.problems:
        raise RunFailed(f"{len(store.problems)} bad shard(s) were not copied (listed above); "
                        "re-extract their items with `proloc extract` on the merged store")
    return 0


@cli_main(prog("extract"))
def extract_command(argv: list[str] | None = None) -> int:
    import pandas as pd

    p = CommandParser("extract", epilog=EXIT_CODES,
                      description="Embed the stage-01 tables of a profile into its feature stores "
                      "(resumable; shardable across machines, or across GPUs under torchrun).")
    p.add_argument("--profile", default="demo", help="profile name in configs/ (default: demo)")
    p.add_argument("--data-root", default=None,
                   help="folder of the stage outputs (default: $PROLOC_DATA_ROOT or data/)")
    p.add_argument("--seed", type=int, default=0,
                   help="run seed whose stage-01 tables to embed (as `proloc run --seed`; default 0)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda, cuda:N or mps (default: auto; under torchrun "
                        "cuda:LOCAL_RANK)")
    p.add_argument("--shard", default=None, metavar="i/N",
                   help="embed only this machine's share i of N (default: all; under torchrun RANK/WORLD_SIZE)")
    p.add_argument("--modality", choices=["sequences", "images", "both"], default="both",
                   help="which features to embed (default: both)")
    p.add_argument("--on-stale", choices=["error", "recompute"], default="error",
                   help="a store made by another encoder or other settings: stop with an error, or move it "
                        "aside and embed everything again (default: error)")
    args = p.parse_args(argv)
    shard = args.shard
    parse_shard(shard)                       # a bad --shard fails before any work
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if world > 1:  # launched by torchrun / accelerate: one deterministic share per rank
        shard = shard or f"{os.environ['RANK']}/{world}"
        if device == "auto":
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    try:
        device = runtime.resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"--device: {exc}") from None
    cfg = _load_profile(args.profile)
    seed = check_seed(args.seed)
    in_dir = paths.stage_dir(cfg.name, "01_data_assembly", args.data_root, seed=seed)
    out_dir = paths.stage_dir(cfg.name, "02_embeddings", args.data_root, seed=seed)
    # a writer of the stores beside others (shards, torchrun ranks), not while notebook 02 runs
    store_lock = FolderLock(out_dir, shared=True).acquire()
    try:
        manifest.read_manifest(in_dir, rebuild=f"proloc run --profile {profiles.profile_reference(cfg)} "
                                               f"--seed {seed} --only 01")
        proteins = pd.read_parquet(in_dir / "proteins.parquet") if args.modality != "images" else None
        images = pd.read_parquet(in_dir / "images.parquet") if args.modality != "sequences" else None
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the stage-01 tables in {in_dir}: {exc}") from None
    n_failed = 0
    try:
        if proteins is not None:
            rep = embed_sequence_stage(cfg, proteins, out_dir, device, shard, args.on_stale)
            _print_repairs("sequences", rep)
            print(f"sequences: {rep['embedded']} embedded, {len(rep['failures'])} failures")
            n_failed += len(rep["failures"])
        if images is not None:
            rep = embed_image_stage(cfg, images, paths.profile_dir(cfg.name, args.data_root),
                                    out_dir, device, shard, args.on_stale)
            for name, r in [(None, rep), *rep.get("variants", {}).items()]:
                what = "images" if name is None else f"images-{name}"
                _print_repairs(what, r)
                print(f"{what}: {r['embedded']} embedded, {len(r['failures'])} failures "
                      f"({r['decode_workers']} decode threads)")
                n_failed += len(r["failures"])
    except OfflineError as exc:
        raise RunFailed(str(exc)) from None
    store_lock.release()
    if n_failed:
        raise RunFailed(f"{n_failed} items could not be embedded (listed in the stores' failures.json); "
                        "fix or remove them, then run `proloc extract` again")
    print("done; run notebook 02 to verify the stores and write the stage manifest")
    return 0

