"""User errors and the one way every command line reports them.

A user error (bad argument, missing or unreadable file, wrong profile key) is raised as a
``UserError`` subclass whose message names the file and the problem in one line. Command lines
wrap their ``main`` with ``cli_main``: user errors print ``<prog>: <message>`` on stderr and exit
with ``EXIT_USAGE`` (2) or the error's own ``exit_code``; ``--debug`` (or PROLOC_DEBUG=1) re-raises
to show the traceback. Anything else is a bug and keeps its traceback.

Exit codes (documented in README): 0 ok, 1 a run failed (a stage, a download, a check),
2 bad arguments or bad input files, 130 interrupted.
"""

from __future__ import annotations

import functools
import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """A problem the user can fix; the message is one line naming the file and the problem."""
    exit_code = EXIT_USAGE


class RunFailed(UserError):
    """Work was attempted and failed for a reason outside the code (network, a failed stage)."""
    exit_code = EXIT_FAILED


class DiskFull(RunFailed):
    """A write failed because the disk (or the user's quota) is full; names what was being written."""


def debug_requested(argv: list[str] | None) -> bool:
    return "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("PROLOC_DEBUG") == "1"


def one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def cli_main(prog: str):
    """Decorator for ``main(argv=None) -> int``: user errors become one line + an exit code."""
    def wrap(main):
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except UserError as e:
                if debug_requested(argv):
                    raise
                print(f"{prog}: {one_line(e)}", file=sys.stderr)
                return e.exit_code
            except KeyboardInterrupt:
                if debug_requested(argv):
                    raise
                print(f"{prog}: interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED
        return run
    return wrap
