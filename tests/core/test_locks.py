"""Folder locks: one writer at a time, readers together, the holder named in one line, a dead
holder's lock taken over with a note, a lock handed to a child process, a cell run twice."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from proloc_lib.core import locks
from proloc_lib.core.locks import FolderLock, StageBusy

ROOT = Path(__file__).resolve().parents[2]


def _in_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(tmp_path):
    folder = tmp_path / "smoke" / "01_data_assembly"
    with FolderLock(folder):
        err = _in_thread(lambda: FolderLock(folder).acquire())["error"]
        assert isinstance(err, StageBusy) and err.exit_code == 1
        msg = str(err)
        assert "\n" not in msg and msg.startswith(f"{folder} is being written by pid {os.getpid()} on "
                                                  f"{socket.gethostname()}")
        assert "started " in msg and "`" in msg
    assert _in_thread(lambda: FolderLock(folder).acquire().release())["value"] is None   # free again


def test_readers_share_and_keep_a_writer_out(tmp_path):
    folder = tmp_path / "02_embeddings"
    with FolderLock(folder, shared=True):
        assert _in_thread(lambda: FolderLock(folder, shared=True).acquire().state)["value"] == "held"
        err = _in_thread(lambda: FolderLock(folder).acquire())["error"]
        assert isinstance(err, StageBusy) and "is being read by pid" in str(err)
    with FolderLock(folder):
        assert isinstance(_in_thread(lambda: FolderLock(folder, shared=True).acquire())["error"], StageBusy)
    assert not list(tmp_path.glob("*.reader"))     # readers leave no record behind


def test_a_dead_holders_lock_is_taken_over_with_a_note(tmp_path, capfd):
    folder = tmp_path / "03_training"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from proloc_lib.core.locks import FolderLock
        lock = FolderLock({str(folder)!r}).acquire()
        print("held", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout == "held\n" and proc.returncode == -signal.SIGKILL
    left = json.loads(locks.lock_path(folder).read_text())
    assert left["pid"] != os.getpid() and not locks.pid_alive(left["pid"])
    capfd.readouterr()
    with FolderLock(folder) as lock:
        assert lock.state == "held"
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"taking over the lock left by pid {left['pid']}" in err
    assert "ended without releasing it" in err


def test_a_lock_handed_to_a_child_through_the_environment(tmp_path, monkeypatch):
    folder = tmp_path / "04_baselines"
    with FolderLock(folder) as parent:
        monkeypatch.setenv(locks.LOCKS_ENV, json.dumps({str(parent.path): "not the token"}))
        assert isinstance(_in_thread(lambda: FolderLock(folder).acquire())["error"], StageBusy)
        monkeypatch.setenv(locks.LOCKS_ENV, locks.delegation_env(parent)[locks.LOCKS_ENV])
        assert _in_thread(lambda: FolderLock(folder).acquire().state)["value"] == "delegated"


def test_a_newer_holder_in_the_same_thread_takes_over(tmp_path):
    """A notebook cell that makes its stage again: the newer object owns the folder, the older can
    no longer publish; another thread is still refused."""
    folder = tmp_path / "05_figures"
    old = FolderLock(folder).acquire()
    new = FolderLock(folder).acquire()
    assert new.state == "held" and old.state == "superseded"
    new.check_owned()
    with pytest.raises(StageBusy, match="took it over"):
        old.check_owned()
    assert isinstance(_in_thread(lambda: FolderLock(folder).acquire())["error"], StageBusy)
    assert FolderLock(folder, shared=True).acquire().state == "joined"     # reading what it writes
    new.release()
    assert _in_thread(lambda: FolderLock(folder).acquire().release())["value"] is None


def test_command_line_reads_as_the_user_typed_it():
    assert locks.command_line(["/x/bin/proloc", "run", "--only", "01"]) == "proloc run --only 01"
    assert locks.command_line([str(ROOT / "proloc_lib" / "__main__.py"), "run"]) == "proloc run"
    assert locks.command_line(["/x/ipykernel_launcher.py", "-f", "k.json"]) == "a Jupyter kernel"
