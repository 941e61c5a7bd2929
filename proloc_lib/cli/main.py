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

import importlib
import os
import sys

from proloc_lib.cli.run import run_command
from proloc_lib.core.errors import EXIT_USAGE, UserError, cli_main

PROG = "proloc"


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
    "audit": ("check the authors' / Vislocas HPA tables against the label mapping", _delegate("cli.data", "main", "audit")),
    "mirror": ("serve an offline mirror of the full data path on 127.0.0.1 (real tables, SYNTHETIC images)",
               _delegate("cli.data", "main", "mirror")),
    "extract": ("embed a profile's sequences and images into the feature stores (resumable, shardable)",
                _delegate("cli.features", "cli", "extract")),
    "merge": ("join feature stores written on several machines into one", _delegate("cli.features", "cli", "merge")),
    "bench": ("feature store size and sequence-embedding throughput (prints JSON)",
              _delegate("cli.bench", "main", "bench")),
    "bench-training": ("authors' vs corrected training loop throughput (prints JSON)",
                       _delegate("cli.bench", "main", "bench-training")),
    "bench-images": ("image decode + ViT extraction throughput (prints JSON)", _delegate("cli.bench_images", "main")),
    "dry-run": ("estimate a profile's time and memory on a device without running it",
                _delegate("cli.bench", "main", "dry-run")),
    "predict": ("predict locations of new proteins from a checkpoint, FASTA and IHC images",
                _delegate("cli.predict", "main")),
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
