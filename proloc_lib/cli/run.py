"""``proloc run``: the study, notebooks 01..05 through papermill, after checking the profile and the device."""

from __future__ import annotations

import os
from pathlib import Path

from proloc_lib.cli.common import CommandParser, count, prog
from proloc_lib.core import paths, runtime
from proloc_lib.core.errors import UserError, cli_main
from proloc_lib.profiles import loader as profiles
from proloc_lib.stages.runner import execute_notebook, notebooks


def _parser() -> CommandParser:
    p = CommandParser("run", description="Run notebooks 01..05 in order with papermill; each executed copy "
                      "is written to a temporary file and moved into place only when the notebook succeeds.")
    p.add_argument("--profile", default="demo", help="profile name in configs/ (default: demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (an integer; default 0)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--data-root", default=None, help="where stage outputs go (default: $PROLOC_DATA_ROOT or data/)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="full profile: one base URL serving Zenodo, UniProt and HPA images (overrides data.mirror; "
                        "e.g. `proloc mirror` or an institutional mirror; default: none)")
    p.add_argument("--only", default=None, metavar="01,03",
                   help="comma-separated notebook numbers to run (default: all, in order)")
    p.add_argument("--out", default=None, help="folder for executed notebooks (default: <project>/executed/<profile>)")
    p.add_argument("--check", action="store_true",
                   help="only check the profile (every key, against the schema) and the device, then exit")
    p.add_argument("--no-progress", action="store_true", help="no papermill progress bar (default: shown)")
    p.add_argument("--gpus", type=count, default=None, metavar="N",
                   help="notebook 03 trains its runs in N processes, one GPU each (cuda:0..N-1; the notebook "
                        "stays one process and gathers their results); also set by torchrun --nproc_per_node N "
                        "(default: 1)")
    return p


# what torchrun sets for its workers; rank 0 takes it off before the notebooks run
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
                "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCHELASTIC_ERROR_FILE")


def _under_torchrun(gpus: int | None) -> tuple[int, int] | None:
    """(this process's rank, ranks) when torchrun started this command, else None.

    ``proloc run`` starts its own training ranks (``training.distributed``), so under
    ``torchrun --nproc_per_node N`` rank 0 runs the notebooks with N training ranks and the
    other ranks have nothing to do: one node only."""
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if world != local:
        raise UserError(f"torchrun over {world // max(local, 1)} nodes: proloc run trains on the GPUs of one node "
                        "(torchrun --standalone --nproc_per_node N)")
    if gpus is not None and gpus != world:
        raise UserError(f"--gpus {gpus} under torchrun --nproc_per_node {world}: give one of them")
    return int(os.environ.get("RANK", 0)), world


@cli_main(prog("run"))
def run_command(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    # everything checked before any work: profile (every key), notebooks, device
    cfg = profiles.load_profile(args.profile)
    books = notebooks(args.only)
    device = runtime.resolve_device(args.device)
    launched = _under_torchrun(args.gpus)
    gpus = launched[1] if launched else (args.gpus or 1)
    runtime.check_ranks(device, gpus)
    if launched and launched[0] != 0:
        print(f"{prog('run')}: rank {launched[0]} of {gpus}: rank 0 runs the notebooks and starts the "
              "training ranks itself; nothing to do here", flush=True)
        return 0
    for key in TORCHRUN_ENV if launched else ():
        os.environ.pop(key, None)
    if args.check:
        print(f"{prog('run')}: profile '{cfg['profile']}' is valid; {len(books)} notebook(s) would run")
        return 0
    if args.profile.endswith((".yaml", ".yml")):
        raise UserError("give a profile name from configs/ (stage folders are named after it); "
                        f"save {args.profile} as configs/<name>.yaml")
    out = Path(args.out) if args.out else paths.PROJECT_ROOT / "executed" / args.profile
    params = {"profile": args.profile, "seed": args.seed, "device": args.device}
    if args.data_root:
        params["data_root"] = str(Path(args.data_root).resolve())
    if args.mirror and not args.mirror.startswith(("http://", "https://")):
        raise UserError(f"--mirror must be an http(s) base URL, got {args.mirror!r}")
    for book in books:
        print(f"== {args.profile}: {book.name}", flush=True)
        extra = {"mirror": args.mirror} if args.mirror and book.name.startswith("01_") else {}
        if book.name.startswith("03_") and gpus > 1:
            extra["gpus"] = gpus
        execute_notebook(book, out / book.name, {**params, **extra}, progress=not args.no_progress)
    figures = paths.figures_dir(args.profile)
    print(f"== done: executed notebooks in {out}/, figures in {figures}/")
    return 0
