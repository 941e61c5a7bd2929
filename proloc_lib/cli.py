"""``proloc``: the one command line (also ``python -m proloc_lib``).

    proloc run --profile demo            # the study: notebooks 01..05 through papermill
    proloc audit data_test.csv           # check HPA tables against the label mapping
    proloc extract --profile full --shard 0/2
    proloc predict --checkpoint DIR --fasta F --images DIR --out preds.csv
    proloc <command> --help              # each command's own options

Each command is a thin dispatcher: it imports its module only when called (no import cycles,
a fast ``--help``) and passes the remaining arguments to that module's own parser. The old
``python -m proloc_lib.<module>`` entries keep working. Errors: one line on stderr and an exit
code (0 ok, 1 a run failed, 2 bad arguments or input files, 130 interrupted); ``--debug`` (or
PROLOC_DEBUG=1) shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path

from .errors import EXIT_USAGE, RunFailed, UserError, cli_main

PROG = "proloc"
# the inline backend: executed notebooks keep their figures as outputs (Agg would drop them)
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def _delegate(module: str, func: str, *head: str):
    """A command that hands its arguments to ``module.func(argv)`` (imported only when run)."""
    def run(argv: list[str]) -> int:
        try:
            mod = importlib.import_module(f"proloc_lib.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"proloc_lib.{module}":
                raise
            raise UserError(f"this version of proloc_lib has no '{module}' module (command not available)") from None
        fn = getattr(mod, func, None)
        if fn is None:
            raise UserError(f"proloc_lib.{module} has no '{func}' entry point (command not available)")
        return fn([*head, *argv])
    return run


# name -> (one-line help, handler). The handlers' own parsers document their options.
COMMANDS: dict[str, tuple[str, object]] = {
    "run": ("run the study: notebooks 01..05 through papermill (what run_all.sh does after set-up)", None),
    "audit": ("check the authors' / Vislocas HPA tables against the label mapping", _delegate("data", "main", "audit")),
    "mirror": ("serve an offline mirror of the full data path on 127.0.0.1 (real tables, SYNTHETIC images)",
               _delegate("data", "main", "mirror")),
    "extract": ("embed a profile's sequences and images into the feature stores (resumable, shardable)",
                _delegate("embeddings", "cli", "extract")),
    "merge": ("join feature stores written on several machines into one", _delegate("embeddings", "cli", "merge")),
    "bench": ("feature store size and sequence-embedding throughput (prints JSON)",
              _delegate("benchmarks", "main", "bench")),
    "bench-training": ("authors' vs corrected training loop throughput (prints JSON)",
                       _delegate("benchmarks", "main", "bench-training")),
    "bench-images": ("image decode + ViT extraction throughput (prints JSON)", _delegate("bench_images", "main")),
    "dry-run": ("estimate a profile's time and memory on a device without running it",
                _delegate("benchmarks", "main", "dry-run")),
    "predict": ("predict locations of new proteins from a checkpoint, FASTA and IHC images",
                _delegate("predict", "main")),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help for its options)", "",
             "The one command line of proloc-ihs (also: python -m proloc_lib).", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (text, _) in COMMANDS.items()]
    lines += ["", "options: -h/--help, --version, --debug (show tracebacks)",
              "exit codes: 0 ok, 1 a run failed, 2 bad arguments or input files, 130 interrupted"]
    return "\n".join(lines) + "\n"


@cli_main(PROG)
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # cli_main has seen it; the commands' own parsers do not know it
        argv.remove("--debug")
        os.environ["PROLOC_DEBUG"] = "1"
    if not argv or argv[0] in ("-h", "--help", "help"):
        (sys.stdout if argv else sys.stderr).write(_usage())
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version
        try:
            print(f"{PROG} {version('proloc-ihs')}")
        except PackageNotFoundError:
            print(f"{PROG} (not installed; source tree)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib
        guess = difflib.get_close_matches(name, COMMANDS, n=1)
        raise UserError(f"unknown command '{name}'" + (f"; did you mean '{guess[0]}'?" if guess else "")
                        + f" (commands: {', '.join(COMMANDS)})")
    if name == "run":
        return run_command(rest)
    return COMMANDS[name][1](rest)


# -- run: the notebooks ---------------------------------------------------------------------------
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


class StageFailed(RunFailed):
    pass


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} run", description="Run notebooks 01..05 in order with papermill; each executed copy "
        "is written to a temporary file and moved into place only when the notebook succeeds.")
    p.add_argument("--profile", default="demo", help="profile name in configs/ (default: demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (an integer; default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N, mps")
    p.add_argument("--data-root", default=None, help="where stage outputs go (default: $PROLOC_DATA_ROOT or data/)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="full profile: one base URL serving Zenodo, UniProt and HPA images (overrides data.mirror; "
                        "e.g. `python -m proloc_lib.data mirror` or an institutional mirror)")
    p.add_argument("--only", default=None, metavar="01,03",
                   help="comma-separated notebook numbers to run (default: all, in order)")
    p.add_argument("--out", default=None, help="folder for executed notebooks (default: <project>/executed/<profile>)")
    p.add_argument("--check", action="store_true",
                   help="only check the profile (every key, against the schema) and the device, then exit")
    p.add_argument("--no-progress", action="store_true", help="no papermill progress bar")
    return p


def _parse_run(argv: list[str]) -> argparse.Namespace:
    parser = _run_parser()

    def fail(message: str):
        raise UserError(f"run: {message} (see '{PROG} run --help')")
    parser.error = fail  # type: ignore[method-assign]
    return parser.parse_args(argv)


def notebooks(only: str | None = None) -> list[Path]:
    books = sorted(NOTEBOOK_DIR.glob("0[1-9]_*.ipynb"))
    if not only:
        return books
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    picked = [b for b in books if b.name[:2] in wanted]
    missing = sorted(set(wanted) - {b.name[:2] for b in picked})
    if missing:
        raise UserError(f"run: no notebook numbered {', '.join(missing)} (have {', '.join(b.name[:2] for b in books)})")
    return picked


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _short_error(exc) -> str:
    """The notebook's own error in one line (``OfflineError: cannot reach ...``), no traceback."""
    ename = getattr(exc, "ename", None) or type(exc).__name__
    evalue = _ANSI.sub("", str(getattr(exc, "evalue", "") or "")).strip()
    lines = [ln.strip() for ln in evalue.splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    if len(text) > 400:
        text = text[:397] + "..."
    return f"{ename}: {text}" if text else ename


def execute_notebook(src: Path, dest: Path, parameters: dict, *, progress: bool = True) -> Path:
    """Run one notebook into ``dest`` without ever leaving a half-written or failed copy there.

    It runs into a temporary file beside ``dest``; on success that replaces ``dest``; on failure
    it is kept as ``<name>.failed.ipynb`` (the error inside) and ``dest``, the last good copy, is
    untouched. Kernels get the inline matplotlib backend, so figures stay in the executed copy.
    """
    import papermill as pm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.running.ipynb")
    failed = dest.with_name(f"{dest.stem}.failed.ipynb")
    previous = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    try:
        pm.execute_notebook(str(src), str(tmp), parameters=parameters, cwd=str(src.parent),
                            progress_bar=progress, kernel_name="python3",
                            # the kernel's own start-up warnings (e.g. "running over TCP") are noise here
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except BaseException as exc:
        if tmp.exists():
            os.replace(tmp, failed)
        if isinstance(exc, pm.PapermillExecutionError):
            kept = f"; the last good copy {dest} is kept" if dest.exists() else ""
            raise StageFailed(f"{src.stem} failed: {_short_error(exc)} (executed copy with the error: "
                              f"{failed}{kept})") from None
        raise
    finally:
        if previous is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = previous
    os.replace(tmp, dest)
    if failed.exists():
        failed.unlink()  # superseded by a good run
    return dest


def run_command(argv: list[str]) -> int:
    args = _parse_run(argv)
    from . import config

    # everything checked before any work: profile (every key), notebooks, device
    cfg = config.load_profile(args.profile)
    books = notebooks(args.only)
    config.resolve_device(args.device)
    if args.check:
        print(f"{PROG} run: profile '{cfg['profile']}' is valid; {len(books)} notebook(s) would run")
        return 0
    if args.profile.endswith((".yaml", ".yml")):
        raise UserError("run: give a profile name from configs/ (stage folders are named after it); "
                        f"save {args.profile} as configs/<name>.yaml")
    out = Path(args.out) if args.out else config.PROJECT_ROOT / "executed" / args.profile
    params = {"profile": args.profile, "seed": args.seed, "device": args.device}
    if args.data_root:
        params["data_root"] = str(Path(args.data_root).resolve())
    if args.mirror and not args.mirror.startswith(("http://", "https://")):
        raise UserError(f"run: --mirror must be an http(s) base URL, got {args.mirror!r}")
    for book in books:
        print(f"== {args.profile}: {book.name}", flush=True)
        extra = {"mirror": args.mirror} if args.mirror and book.name.startswith("01_") else {}
        execute_notebook(book, out / book.name, {**params, **extra}, progress=not args.no_progress)
    figures = config.figures_dir(args.profile)
    print(f"== done: executed notebooks in {out}/, figures in {figures}/")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
