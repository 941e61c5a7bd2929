"""``proloc check-readme``: the numbers a README quotes against the summary notebook 05 wrote.

A quote is a number (or a main-table cell) followed by ``<!-- summary: key/path -->``; the file
it comes from is named before it by ``<!-- summary-file: figures/<profile>/summary.json -->``
(``stages.figures.readme_mismatches``). Exit code 0 when every quote matches, 1 otherwise.
"""

from __future__ import annotations

from pathlib import Path

from proloc_lib.cli.common import CommandParser, prog
from proloc_lib.core import paths
from proloc_lib.core.errors import UserError, cli_main
from proloc_lib.stages.figures import readme_mismatches, tagged_quotes


def _parser() -> CommandParser:
    p = CommandParser("check-readme", description="Check every tagged number of a README against the "
                      "summary.json that notebook 05 wrote (figures/<profile>/summary.json).")
    p.add_argument("readme", nargs="?", default=str(paths.PROJECT_ROOT / "README.md"),
                   help="the Markdown file to check (default: the project's README.md)")
    p.add_argument("--root", default=None,
                   help="folder the summary-file paths are relative to (default: the README's folder)")
    return p


@cli_main(prog("check-readme"))
def check_readme_command(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    readme = Path(args.readme)
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{readme}: cannot read ({exc})") from None
    problems = readme_mismatches(text, root=Path(args.root) if args.root else readme.parent)
    for line in problems:
        print(f"{readme}: {line}")
    n = tagged_quotes(text)
    print(f"{prog('check-readme')}: {n - len(problems)} of {n} tagged quote(s) in {readme} match their summary")
    return 1 if problems else 0
