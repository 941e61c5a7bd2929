"""Notebook execution: a failed notebook never replaces the last good copy and ends with its own error;
each run has a temporary copy of its own, leftovers of killed runs are removed, an interrupted run
leaves nothing and stops its kernel, the kernel gets the environment it is handed;
executed copies hold no warning and each progress bar once, finished, and nbval reproduces their outputs."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from proloc_lib.core.fileio import umask_mode
from proloc_lib.core.locks import pid_alive
from proloc_lib.stages import runner


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


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_runs_go_and_the_copy_gets_the_users_permissions(tmp_path):
    dest = tmp_path / "executed" / "01_demo.ipynb"
    dest.parent.mkdir()
    dead = dest.with_name(f".01_demo.running-{_dead_pid()}-ab12.ipynb")
    legacy = dest.with_name(".01_demo.running.ipynb")            # the fixed name of earlier versions
    live = dest.with_name(f".01_demo.running-{os.getpid()}-cd34.ipynb")   # a run still going: kept
    for p in (dead, legacy, live):
        p.write_text("{}")
    src = _notebook(tmp_path / "01_demo.ipynb", "import os\nprint('value', os.environ['PROLOC_TEST_VALUE'], x)")
    runner.execute_notebook(src, dest, {"x": 7}, progress=False, env={"PROLOC_TEST_VALUE": "42"})
    assert "value 42 7" in dest.read_text()                      # the kernel got the environment handed to it
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted([dest.name, live.name])
    assert dest.stat().st_mode & 0o777 == umask_mode(0o666)


@pytest.mark.slow
def test_an_interrupted_run_leaves_nothing_and_stops_its_kernel(tmp_path, capfd):
    marker = tmp_path / "kernel.pid"
    src = _notebook(tmp_path / "01_demo.ipynb", f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\n"
                                                "time.sleep(120)")
    dest = tmp_path / "executed" / "01_demo.ipynb"

    def interrupt_when_running():
        deadline = time.time() + 240
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)     # Ctrl-C in the terminal reaches the runner's process

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        runner.execute_notebook(src, dest, {}, progress=False)
    assert list(dest.parent.iterdir()) == []                     # no copy, no failed copy, no temporary file
    kernel = int(marker.read_text())
    for _ in range(50):
        if not pid_alive(kernel):
            break
        time.sleep(0.2)
    assert not pid_alive(kernel), "the kernel outlived the run"
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ZMQError" not in err


ROOT = Path(__file__).resolve().parents[2]
# a progress line: "<desc>: 100%|##########| 60/60 [...]" or, without a total, "<desc>: 12 it [...]"
BAR = re.compile(r"^(?P<desc>[^\n:]+): +(\d+%\||\d+ \w+ \[)", re.M)


def _outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            yield i, out


def _text(out) -> str:
    if out["output_type"] == "stream":
        return out["text"]
    if out["output_type"] == "error":
        return "\n".join(out["traceback"])
    return "\n".join(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))


@pytest.mark.slow
def test_executed_copies_hold_no_warning_and_each_bar_once_finished(smoke_run):
    _, _, executed = smoke_run
    bars_seen = 0
    for path in sorted(executed.glob("0[1-5]_*.ipynb")):
        for i, out in _outputs(path):
            where = f"{path.name} cell {i}"
            assert out["output_type"] != "error", where
            assert not (out["output_type"] == "stream" and out["name"] == "stderr"), \
                f"{where}: stderr output {out['text'][:200]!r}"
            text = _text(out)
            assert "Warning" not in text and "IProgress" not in text, f"{where}: {text[:200]!r}"
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), f"{where}: widget"
            assert "\r" not in text, f"{where}: a redrawn bar"
        per_cell: dict = {}
        for i, out in _outputs(path):
            for m in BAR.finditer(_text(out)):
                per_cell.setdefault((i, m["desc"]), []).append(m.group(0))
        assert all(len(v) == 1 for v in per_cell.values()), f"{path.name}: {per_cell}"
        bars_seen += len(per_cell)
        if path.stem == "03_training":
            # the epoch bar of all runs, in its final state (every run trains to its schedule's end or stops early)
            epochs = [k for k in per_cell if k[1].startswith("epochs")]
            assert len(epochs) >= 1
    assert bars_seen >= 3          # synthetic images (01), epochs (03), sequences/images (02) at least


def _copy_to_fresh_root(executed: Path, base: Path, new_base: Path) -> list[Path]:
    """The executed copies with their injected parameters pointing at ``new_base`` (a fresh data
    and figures root), so the re-execution writes nowhere the first run did."""
    new_base.mkdir(parents=True)
    copies = []
    for path in sorted(executed.glob("0[1-5]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if "injected-parameters" in cell.metadata.get("tags", []):
                assert str(base) in cell.source
                cell.source = cell.source.replace(str(base), str(new_base))
        copy = new_base / path.name
        nbformat.write(nb, copy)
        copies.append(copy)
    return copies


@pytest.mark.slow
def test_nbval_reproduces_every_output_of_the_executed_smoke_notebooks(smoke_run, tmp_path):
    """Strict nbval: each executed copy re-runs cell by cell in a kernel like the runner's, and
    every output (tables, text, progress lines; images excepted) must equal the saved one once
    notebooks/nbval_sanitize.cfg has blanked paths, times, hashes and float noise past 3 decimals."""
    pytest.importorskip("nbval")
    stages, _, executed = smoke_run
    base = stages.parent.parent                    # the smoke run's root: data/, figures/, executed/
    copies = _copy_to_fresh_root(executed, base, tmp_path / "rerun")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with runner.kernel_environment():
        env.update(runner.KERNEL_ENV)
        res = subprocess.run(runner.nbval_command(copies), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=1800)
    tail = res.stdout[-6000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    summary = re.search(r"(\d+) passed", res.stdout)
    n_cells = sum(1 for c in copies for cell in nbformat.read(c, as_version=4).cells if cell.cell_type == "code")
    assert summary and int(summary.group(1)) == n_cells, tail
    assert (tmp_path / "rerun" / "data" / "smoke" / "05_figures" / "all_metrics.csv").exists()


def test_sanitizer_blanks_what_differs_between_runs_and_keeps_the_numbers():
    """The nbval sanitize regexes, applied as nbval applies them (in file order)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(runner.NBVAL_SANITIZE)
    rules = [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]

    def clean(text):
        for rx, rep in rules:
            text = rx.sub(rep, text)
        return text

    a = ("wrote /tmp/pytest-of-root/pytest-7/smoke0/data/smoke/03_training\n"
         "epochs (14 runs): 100%|##########| 60/60 [01:02<00:00,  1.04s/it]\n"
         "F1 0.85612345, config 3f2a9c0d1e4b5a6c, at 2026-12-06T09:31:21.123+00:00 in 12.5 s")
    b = ("wrote /tmp/pytest-of-root/pytest-9/rerun/data/smoke/03_training\n"
         "epochs (14 runs): 100%|##########| 60/60 [00:58<00:00,  1.11it/s]\n"
         "F1 0.85619999, config 0a1b2c3d4e5f6a7b, at 2026-12-07T10:00:00.000+00:00 in 9.1 s")
    assert clean(a) == clean(b)
    assert (clean("<pandas.io.formats.style.Styler at 0x7f3a1c2b9d10>")
            == clean("<pandas.io.formats.style.Styler at 0x7f00aa>"))
    assert "0.856" in clean(a) and "60/60" in clean(a) and "100%" in clean(a)
    assert clean("F1 0.856") != clean("F1 0.857")               # a real difference still fails
    assert clean("60/60") != clean("35/60")


def test_nbval_is_a_declared_test_dependency():
    text = (ROOT / "pyproject.toml").read_text()
    test_extra = re.search(r"^test = \[(.*)\]$", text, re.M).group(1)
    assert '"nbval' in test_extra
    cmd = runner.nbval_command([Path("/x/01.ipynb")])
    assert "--nbval" in cmd and "--nbval-lax" not in cmd and cmd[-1] == "/x/01.ipynb"
    assert cmd[cmd.index("--nbval-sanitize-with") + 1] == str(runner.NBVAL_SANITIZE)
