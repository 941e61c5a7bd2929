"""Notebook execution: a failed notebook never replaces the last good copy and ends with its own error;
each run has a temporary copy of its own, leftovers of killed runs are removed, an interrupted run
leaves nothing and stops its kernel, the kernel gets the environment it is handed."""
from __future__ import annotations

import os
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
