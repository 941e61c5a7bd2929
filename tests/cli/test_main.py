"""The command line: `proloc` / `python -m proloc_lib` dispatch (every command listed, helped and
reporting errors in one line) and the old module entries. `proloc run` and run_all.sh are in
test_run.py."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from proloc_lib.cli import main
from proloc_lib.cli.common import CommandParser
from proloc_lib.core.errors import UserError
from proloc_lib.core.paths import PROJECT_ROOT as ROOT

EXPECTED = {"run", "check-readme", "audit", "mirror", "extract", "merge", "predict", "dry-run", "bench",
            "bench-training", "bench-loader", "bench-seeds", "bench-images", "profile-training"}
# what each command needs besides options, so that a bad option is what its parser reports
REQUIRED = {"audit": ["absent.csv"], "merge": ["dest", "source"], "predict": ["--checkpoint", "c", "--fasta", "f"]}
# old `python -m proloc_lib.<module>` entry -> (its arguments, the command they forward to)
LEGACY = {"embeddings": (["extract"], "extract"), "benchmarks": (["bench-seeds"], "bench-seeds"),
          "bench_images": ([], "bench-images"), "data": (["audit"], "audit"), "predict": ([], "predict")}


def command_parser(name: str, monkeypatch) -> CommandParser:
    """The parser ``proloc <name>`` builds, caught as it reads ``--help``."""
    built = []
    parse_args = CommandParser.parse_args

    def record(self, *args, **kwargs):
        built.append(self)
        return parse_args(self, *args, **kwargs)

    monkeypatch.setattr(CommandParser, "parse_args", record)
    with pytest.raises(SystemExit):
        main.main([name, "--help"])
    assert len(built) == 1
    return built[0]


def test_the_dispatcher_table_has_every_command():
    assert set(main.COMMANDS) == EXPECTED
    assert {cmd.group for cmd in main.COMMANDS.values()} <= set(main.GROUP_TITLES)


def test_every_command_the_documentation_names_exists():
    """README.md and docs/ name commands as `proloc X`; each X is a command of the dispatcher."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {m for page in pages for m in re.findall(r"\bproloc ([a-z][a-z-]+)", page.read_text())}
    assert named and named <= set(main.COMMANDS), sorted(named - set(main.COMMANDS))


def test_top_level_help_lists_every_command_once_under_its_group(run_proloc):
    rc, out, _ = run_proloc(["--help"])
    assert rc == 0 and out.startswith("usage: proloc <command>") and "exit codes" in out
    lines = out.splitlines()
    for name, cmd in main.COMMANDS.items():
        listed = [i for i, line in enumerate(lines) if line.startswith(f"  {name} ")]
        assert len(listed) == 1, name
        assert cmd.summary in lines[listed[0]]
        title = next(line for line in reversed(lines[:listed[0]]) if not line.startswith(" ") and line)
        assert title == f"{main.GROUP_TITLES[cmd.group]}:", name
    rc, _, err = run_proloc([])       # no command: usage on stderr, exit 2
    assert rc == 2 and err.startswith("usage: proloc")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_command_runs_with_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main.main([name, "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and out.startswith(f"usage: proloc {name} ")
    assert "--debug" in out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_option_has_a_help_text(name, monkeypatch, capsys):
    parser = command_parser(name, monkeypatch)
    assert parser.prog == f"proloc {name}"
    missing = [action.dest for action in parser._actions
               if not action.help or action.help == argparse.SUPPRESS or not action.help.strip()]
    assert not missing, f"proloc {name}: options without help: {missing}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_bad_option_is_one_line_naming_the_command(name, capsys):
    rc = main.main([name, *REQUIRED.get(name, []), "--no-such-option"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"proloc {name}: unrecognized arguments: --no-such-option")
    assert err.rstrip().endswith(f"(see 'proloc {name} --help')")


def test_debug_before_the_command_shows_the_traceback(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        main.main(["--debug", "audit", str(tmp_path / "absent.csv")])


def test_unknown_command_is_one_line_with_a_suggestion(run_proloc):
    rc, _, err = run_proloc(["extrat"])
    assert rc == 2 and err.count("\n") == 1
    assert "unknown command 'extrat'; did you mean 'extract'?" in err


@pytest.mark.parametrize("old", sorted(LEGACY))
def test_old_module_entries_forward_to_proloc(old):
    args, command = LEGACY[old]
    out = subprocess.run([sys.executable, "-m", f"proloc_lib.{old}", *args, "--help"], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: proloc {command} ")
    assert out.stderr == f"note: python -m proloc_lib.{old} is now `proloc {command}`\n"


def test_a_missing_argument_is_one_line(capsys):
    assert main.main(["audit"]) == 2
    err = capsys.readouterr().err
    assert err == "proloc audit: the following arguments are required: csv (see 'proloc audit --help')\n"


def test_python_dash_m_and_the_console_script():
    out = subprocess.run([sys.executable, "-m", "proloc_lib", "--help"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and "bench-training" in out.stdout
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["proloc"].split(":")
    assert module == "proloc_lib.cli.main" and func == "main"


