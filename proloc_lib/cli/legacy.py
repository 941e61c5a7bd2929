"""The old ``python -m proloc_lib.<module>`` entries: each says in one line what replaced it, then runs it."""

from __future__ import annotations

import sys

from proloc_lib.cli.main import main

# old module -> its subcommands (None: the module took no subcommand, it was one command)
OLD_ENTRIES = {
    "embeddings": ("extract", "merge", "bench", "bench-training", "bench-images"),
    "benchmarks": ("bench", "bench-training", "bench-loader", "bench-seeds", "profile-training", "dry-run"),
    "data": ("audit", "mirror"),
    "bench_images": None,
    "predict": None,
}
SINGLE = {"bench_images": "bench-images", "predict": "predict"}


def forward(old: str, argv: list[str] | None = None) -> None:
    """Run ``proloc <command>`` for ``python -m proloc_lib.<old> ...`` and exit with its code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if OLD_ENTRIES[old] is None:
        command = [SINGLE[old]]
    elif argv and argv[0] in OLD_ENTRIES[old]:
        command, argv = [argv[0]], argv[1:]
    else:
        print(f"python -m proloc_lib.{old} is replaced by `proloc <command>` "
              f"(commands: {', '.join(OLD_ENTRIES[old])}); see `proloc --help`", file=sys.stderr)
        sys.exit(2)
    print(f"note: python -m proloc_lib.{old} is now `proloc {' '.join(command)}`", file=sys.stderr)
    sys.exit(main([*command, *argv]))
