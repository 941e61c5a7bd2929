"""``proloc run``: the study, notebooks 01..05 through papermill, after checking the profile, the
device and the output folders."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path

from proloc_lib.cli.common import CommandParser, count, prog
from proloc_lib.core import paths, runtime
from proloc_lib.core.errors import UserError, cli_main
from proloc_lib.profiles import loader as profiles
from proloc_lib.stages.common import check_seed
from proloc_lib.stages.runner import notebooks, run_stages

SEED_HELP = ("run seed, a whole number >= 0 (default 0). Seed s is one replicate of the whole study: it seeds "
             "stage 01's protein sample, synthetic images and split, the baselines and the figures' resampling, "
             "and adds s x 1000 to every training seed of the profile (seed 0: the profile's own seeds). "
             "Each seed's outputs are kept apart: <data root>/<profile>/seed-<s>/ (seed 0: <data root>/<profile>/), "
             "figures and executed notebooks named <profile>-seed-<s>")


def _parser() -> CommandParser:
    p = CommandParser("run", description="Run notebooks 01..05 in order with papermill; each executed copy "
                      "is written to a temporary file and moved into place only when the notebook succeeds. "
                      "A stage whose inputs, parameters and code are unchanged since it was written is skipped; "
                      "a stage another run is writing is refused.")
    p.add_argument("--profile", default="demo",
                   help="profile name in configs/, or the path of a profile file ending in .yaml (default: demo)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--data-root", default=None, help="where stage outputs go (default: $PROLOC_DATA_ROOT or data/); "
                   "figures and executed notebooks then go inside it too")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="full profile: one base URL serving Zenodo, UniProt and HPA images (overrides data.mirror; "
                        "e.g. `proloc mirror` or an institutional mirror; default: none)")
    p.add_argument("--only", default=None, metavar="01,03",
                   help="comma-separated notebook numbers to run (default: all, in order)")
    p.add_argument("--force", action="store_true",
                   help="run every notebook asked for, even stages that are up to date (default: skip those)")
    p.add_argument("--out", default=None, help="folder for executed notebooks (default: executed/<profile>, or "
                   "<data root>/<profile>/executed when a data root is given)")
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


def _writable_folder(path: Path, what: str) -> Path:
    """``path`` as a folder this process can write (created if missing), else one-line UserError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    return path


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: the kernel is stopped, nothing half-written is left."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def stop(signum, frame):
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:   # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@cli_main(prog("run"))
def run_command(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    # everything checked before any work: profile (every key), notebooks, device, output folders
    cfg = profiles.load_profile(args.profile)
    books = notebooks(args.only)
    device = runtime.resolve_device(args.device)
    seed = check_seed(args.seed)
    if args.mirror and not args.mirror.startswith(("http://", "https://")):
        raise UserError(f"--mirror must be an http(s) base URL, got {args.mirror!r}")
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
        print(f"{prog('run')}: profile '{cfg.name}' is valid; {len(books)} notebook(s) would run")
        return 0
    from_env = "" if args.data_root else " (from $PROLOC_DATA_ROOT)" if os.environ.get("PROLOC_DATA_ROOT") else ""
    _writable_folder(paths.data_root(args.data_root), f"data root{from_env}")
    out = Path(args.out) if args.out else paths.executed_dir(cfg.name, seed=seed, data_root=args.data_root)
    _writable_folder(out, "the folder for executed notebooks")
    with _sigterm_as_interrupt():
        run_stages(cfg, books, seed=seed, device=device, data_root=args.data_root, out=out, mirror=args.mirror,
                   gpus=gpus, force=args.force, progress=not args.no_progress)
    figures = paths.figures_dir(cfg.name, seed=seed, data_root=args.data_root)
    print(f"== done: executed notebooks in {out}/, figures in {figures}/")
    return 0
