"""What every ``proloc <command>`` shares: its argument parser and its one-line error prefix.

A command's parser is a ``CommandParser``: its usage reads ``proloc <command> ...``, it knows
``--debug``, and a bad argument raises ``UserError`` instead of printing the usage, so that the
command's ``cli_main(prog(command))`` wrapper prints one line and exits with 2:

    proloc <command>: <message> (see 'proloc <command> --help')
"""

from __future__ import annotations

import argparse

from proloc_lib.core.errors import UserError

PROG = "proloc"
# the line break shows in `proloc --help`; argparse epilogs re-wrap it
EXIT_CODES = ("exit codes: 0 ok, 1 a run failed, 2 bad arguments or input files, 130 interrupted;\n"
              "--debug (or PROLOC_DEBUG=1) shows the traceback of an error.")


def prog(command: str) -> str:
    """``proloc <command>``: the usage name and the error prefix of a command."""
    return f"{PROG} {command}"


class CommandParser(argparse.ArgumentParser):
    """The parser of one ``proloc`` command (no subcommands: ``proloc`` itself dispatches)."""

    def __init__(self, command: str, *, description: str, epilog: str = EXIT_CODES):
        super().__init__(prog=prog(command), description=description, epilog=epilog)
        # cli_main reads --debug from argv itself; declared here so the parser accepts and documents it
        self.add_argument("--debug", action="store_true",
                          help="show the full traceback of an error instead of one line (default: off)")

    def error(self, message):
        raise UserError(f"{message} (see '{self.prog} --help')")


def count(text: str) -> int:
    """An argparse type: a whole number >= 1 (a count of samples, epochs, seeds, steps or threads)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"give a whole number >= 1, not {text!r}")
    return value
