"""``proloc``: the one command line (also ``python -m proloc_lib``).

    proloc run --profile demo            # the study: notebooks 01..05 through papermill
    proloc audit data_test.csv           # check HPA tables against the label mapping
    proloc extract --profile full --shard 0/2
    proloc predict --checkpoint DIR --fasta F --images DIR --out preds.csv
    proloc dry-run --profile full --device cuda
    proloc check-readme README.md        # quoted numbers against figures/<profile>/summary.json
    proloc <command> --help              # each command's own options

``proloc`` only dispatches: each command lives in a module of this package that is imported
when the command runs (a fast start without torch or pandas, no import cycles), and parses its
own options with ``common.CommandParser``. The old ``python -m proloc_lib.<module>`` entries
forward here (``legacy``). Errors: one line ``proloc <command>: ...`` on stderr and an exit code
(0 ok, 1 a run failed, 2 bad arguments or input files, 130 interrupted); ``--debug`` (or
PROLOC_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

from proloc_lib.cli.common import EXIT_CODES, PROG
from proloc_lib.core.errors import EXIT_USAGE, UserError, cli_main


class Command(NamedTuple):
    group: str
    summary: str
    module: str     # under proloc_lib.cli, imported only when the command runs
    function: str   # function(argv) -> exit code


COMMANDS: dict[str, Command] = {
    "run": Command("study", "run the study: notebooks 01..05 through papermill (what run_all.sh runs)",
                   "run", "run_command"),
    "check-readme": Command("study", "check the numbers a README quotes against notebook 05's summary.json",
                            "check", "check_readme_command"),
    "audit": Command("data", "check the authors' / Vislocas HPA tables against the label mapping",
                     "data", "audit_command"),
    "mirror": Command("data", "serve an offline mirror of the full data path on 127.0.0.1 "
                      "(real tables, SYNTHETIC images)", "data", "mirror_command"),
    "extract": Command("features", "embed a profile's sequences and images into the feature stores "
                       "(resumable, shardable)", "features", "extract_command"),
    "merge": Command("features", "join feature stores written on several machines into one",
                     "features", "merge_command"),
    "predict": Command("predict", "predict locations of new proteins from a checkpoint, FASTA and IHC images",
                       "predict", "predict_command"),
    "dry-run": Command("estimate", "list a profile's training runs and estimate their time on a device",
                       "dry_run", "dry_run_command"),
    "bench": Command("benchmarks", "feature store size and sequence-embedding throughput",
                     "bench", "bench_command"),
    "bench-training": Command("benchmarks", "authors' vs corrected training loop: samples/s, peak memory",
                              "bench", "bench_training_command"),
    "bench-loader": Command("benchmarks", "the training data loader alone (no model): samples/s",
                            "bench", "bench_loader_command"),
    "bench-seeds": Command("benchmarks", "several seeds trained at once against one seed: samples/s",
                           "bench", "bench_seeds_command"),
    "bench-images": Command("benchmarks", "image decode and ViT extraction throughput",
                            "bench_images", "bench_images_command"),
    "profile-training": Command("benchmarks", "torch.profiler of a few training steps: top operators",
                                "bench", "profile_training_command"),
}
GROUP_TITLES = {"study": "the study", "data": "data", "features": "features", "predict": "prediction",
                "estimate": "estimates", "benchmarks": "benchmarks (print JSON on stdout)"}


def usage() -> str:
    """``proloc --help``: every command in one line, grouped."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help for its options)", "",
             "The one command line of proloc-ihs (also: python -m proloc_lib).", ""]
    for group, title in GROUP_TITLES.items():
        lines.append(f"{title}:")
        lines += [f"  {name.ljust(width)}  {cmd.summary}" for name, cmd in COMMANDS.items() if cmd.group == group]
        lines.append("")
    lines += ["options: -h/--help, --version, --debug (show the traceback of an error)", EXIT_CODES]
    return "\n".join(lines) + "\n"


def _run(name: str, argv: list[str]) -> int:
    cmd = COMMANDS[name]
    function = getattr(importlib.import_module(f"proloc_lib.cli.{cmd.module}"), cmd.function)
    return function(argv)


@cli_main(PROG)
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0] == "--debug":   # `proloc --debug <command> ...`: handed on to the command
        debug = True
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help", "help"):
        (sys.stdout if argv else sys.stderr).write(usage())
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
                        + f" (commands: {', '.join(COMMANDS)}; see '{PROG} --help')")
    if debug and "--debug" not in rest:
        rest.append("--debug")
    return _run(name, rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
