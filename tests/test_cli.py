"""The command lines: `proloc` / `python -m proloc_lib` dispatch (every command listed, helped and
reporting errors in one line), the old module entries, `run` (notebooks through papermill, nothing
good overwritten), and run_all.sh's argument checks and install stamp."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from proloc_lib.cli import main
from proloc_lib.cli.common import CommandParser
from proloc_lib.core.errors import UserError
from proloc_lib.stages import runner

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"run", "check-readme", "audit", "mirror", "extract", "merge", "predict", "dry-run", "bench", "bench-training",
            "bench-loader", "bench-seeds", "bench-images", "profile-training"}
# what each command needs besides options, so that a bad option is what its parser reports
REQUIRED = {"audit": ["absent.csv"], "merge": ["dest", "source"], "predict": ["--checkpoint", "c", "--fasta", "f"]}
# old `python -m proloc_lib.<module>` entry -> (its arguments, the command they forward to)
LEGACY = {"embeddings": (["extract"], "extract"), "benchmarks": (["bench-seeds"], "bench-seeds"),
          "bench_images": ([], "bench-images"), "data": (["audit"], "audit"), "predict": ([], "predict")}


def run_main(argv, capsys):
    rc = main.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


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


def test_top_level_help_lists_every_command_once_under_its_group(capsys):
    rc, out, _ = run_main(["--help"], capsys)
    assert rc == 0 and out.startswith("usage: proloc <command>") and "exit codes" in out
    lines = out.splitlines()
    for name, cmd in main.COMMANDS.items():
        listed = [i for i, line in enumerate(lines) if line.startswith(f"  {name} ")]
        assert len(listed) == 1, name
        assert cmd.summary in lines[listed[0]]
        title = next(line for line in reversed(lines[:listed[0]]) if not line.startswith(" ") and line)
        assert title == f"{main.GROUP_TITLES[cmd.group]}:", name
    rc, _, err = run_main([], capsys)       # no command: usage on stderr, exit 2
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


def test_unknown_command_is_one_line_with_a_suggestion(capsys):
    rc, _, err = run_main(["extrat"], capsys)
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


@pytest.mark.parametrize("argv, text", [
    (["run", "--seed"], "--seed: expected one argument"),
    (["run", "--seed", "abc"], "invalid int value: 'abc'"),
    (["run", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["run", "--profile", "nope"], "no profile 'nope'"),
    (["run", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "--device", "cuda:x"], "unknown device 'cuda:x'"),
    (["run", "--only", "07"], "no notebook numbered 07"),
])
def test_run_rejects_bad_arguments_before_any_work(argv, text, capsys, tmp_path):
    rc, out, err = run_main([*argv, "--out", str(tmp_path / "executed")], capsys)
    assert rc == 2 and err.count("\n") == 1 and text in err and "Traceback" not in err
    assert not (tmp_path / "executed").exists()


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


# -- run: a failed notebook never replaces the last good copy ----------------------------------------
def _notebook(path: Path, code: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_failed_notebook_keeps_the_good_copy_and_ends_with_its_own_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    dest = tmp_path / "executed" / "01_demo.ipynb"
    runner.execute_notebook(_notebook(src / "01_demo.ipynb", "print('good run', x)"), dest, {"x": 2}, progress=False)
    good = dest.read_bytes()
    assert "good run 2" in good.decode()
    bad = _notebook(src / "01_demo.ipynb", "import json\nraise ValueError('first line\\nthe short message')")
    with pytest.raises(runner.StageFailed) as err:
        runner.execute_notebook(bad, dest, {"x": 3}, progress=False)
    msg = str(err.value)
    assert msg.startswith("01_demo failed: ValueError: the short message (executed copy with the error: ")
    assert "Traceback" not in msg and "\n" not in msg and err.value.exit_code == 1
    assert dest.read_bytes() == good                                   # last good copy untouched
    failed = dest.with_name("01_demo.failed.ipynb")
    assert "the short message" in failed.read_text()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["01_demo.failed.ipynb", "01_demo.ipynb"]
    runner.execute_notebook(_notebook(src / "01_demo.ipynb", "print('again')"), dest, {}, progress=False)
    assert not failed.exists() and "again" in dest.read_text()      # a good run supersedes the failed copy


def test_offline_full_profile_ends_with_one_short_line(tmp_path, offline):
    """`proloc run --profile full` offline: the notebook's own one-line error, exit 1, nothing written."""
    out_dir = tmp_path / "executed"
    out = subprocess.run([sys.executable, "-m", "proloc_lib", "run", "--profile", "full", "--only", "01", "--no-progress",
                          "--out", str(out_dir), "--data-root", str(tmp_path / "data")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    err_lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1, out.stderr
    assert len(err_lines) == 1 and "OfflineError: cannot reach" in err_lines[0], out.stderr
    assert "Traceback" not in out.stderr and len(err_lines[0]) < 700
    assert not (out_dir / "01_data_assembly.ipynb").exists() and (out_dir / "01_data_assembly.failed.ipynb").exists()
    assert not (tmp_path / "data" / "full" / "01_data_assembly").exists()


# -- run_all.sh ----------------------------------------------------------------------------------------
@pytest.fixture
def project_copy(tmp_path):
    """run_all.sh and the profiles in a scratch folder, so nothing here can touch the real project."""
    shutil.copy(ROOT / "run_all.sh", tmp_path / "run_all.sh")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return tmp_path


@pytest.mark.parametrize("args, text", [
    (["--seed"], "--seed needs a value"),
    (["--seed", "abc"], "--seed must be a non-negative integer, got 'abc'"),
    (["--seed", "--test"], "--seed needs a value"),
    (["--profile"], "--profile needs a value"),
    (["--profile", "nope"], "no profile 'nope' (known: demo full"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda, cuda:N or mps"),
    (["--bogus"], "unknown option '--bogus'"),
])
def test_run_all_rejects_bad_arguments_before_any_work(project_copy, args, text):
    before = sorted(p.name for p in project_copy.iterdir())
    out = subprocess.run(["bash", "run_all.sh", *args], capture_output=True, text=True, cwd=project_copy)
    assert out.returncode == 2 and out.stderr == f"run_all.sh: {out.stderr.split(': ', 1)[1]}"
    assert out.stderr.count("\n") == 1 and text in out.stderr and out.stdout == ""
    assert sorted(p.name for p in project_copy.iterdir()) == before     # no venv, no stamp, no outputs


def test_run_all_installs_inside_the_project_and_upgrades_nothing_outside(project_copy):
    """Colab-like (--no-venv): no `pip --upgrade pip`, the stamp in .proloc/, never in sys.prefix;
    then the study is `python -m proloc_lib run` with the checked options. A fake python records calls."""
    prefix = project_copy / "fake-prefix"
    prefix.mkdir()
    log = project_copy / "calls.log"
    fake = project_copy / "fake-python"
    fake.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {log}
if [ "$1" = -c ]; then case "$2" in *prefix*) echo {prefix} ;; *) echo {fake} ;; esac; fi
exit 0
""")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "COLAB_RELEASE_TAG": "fake-colab"}
    for _ in range(2):
        out = subprocess.run(["bash", "run_all.sh", "--profile", "smoke", "--seed", "3"], capture_output=True,
                             text=True, cwd=project_copy, env=env)
        assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    pip = [c for c in calls if c.startswith("-m pip")]
    assert len(pip) == 1 and "-e ." in pip[0] and "--upgrade" not in pip[0]   # installed once, then the stamp
    assert not list(prefix.iterdir())                                      # nothing written into the prefix
    assert [p.name for p in (project_copy / ".proloc").iterdir()][0].startswith("install-")
    assert calls.count("-m proloc_lib run --profile smoke --seed 3 --device auto") == 2
    out = subprocess.run(["bash", "run_all.sh", "--dry-run", "--profile=full", "--device", "cuda"], capture_output=True,
                         text=True, cwd=project_copy, env=env)
    assert out.returncode == 0 and log.read_text().splitlines()[-1] == "-m proloc_lib dry-run --profile full --device cuda"


def test_ci_overlays_cover_the_lowest_admitted_transformers():
    """CI reruns the encoder tests under the lowest transformers pyproject admits and under 5.17
    (5.10-5.19 reject an empty sentencepiece normaliser table): the overlay pins must follow the bound."""
    import re

    deps = (ROOT / "pyproject.toml").read_text()
    lowest = re.search(r'"transformers>=([0-9.]+)"', deps).group(1)
    script = (ROOT / ".ci" / "transformers_versions.sh").read_text()
    versions = re.findall(r'^\s+"([0-9.]+)\|transformers==([0-9.]+) ', script, flags=re.M)
    assert all(a == b for a, b in versions)
    assert {v for v, _ in versions} >= {lowest if lowest.count(".") == 2 else f"{lowest}.0", "5.17.0"}
    assert "bash .ci/transformers_versions.sh" in (ROOT / "run_all.sh").read_text()
