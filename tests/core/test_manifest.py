"""Stage manifests: atomic stage outputs (each run writes into a temporary folder of its own and
publishes it whole; a swap cut short is finished by the next one), checksummed inputs and outputs, a
clear error for a missing or corrupt one; the code version and stage key change with what they cover."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from proloc_lib.core import manifest
from proloc_lib.core.errors import UserError
from proloc_lib.core.fileio import file_sha256


def test_stage_output_is_atomic_and_records_inputs(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    out = tmp_path / "data" / "demo" / "01_data_assembly"
    with manifest.stage_output(out, "01_data_assembly", {"seed": 1}, [src], {"synthetic_images": True}) as (tmp, extra):
        (tmp / "table.csv").write_text("a\n1\n")
        extra["n"] = 1
    man = manifest.read_manifest(out)
    assert man["inputs"][str(src)] == file_sha256(src)
    assert man["outputs"] == {"table.csv": file_sha256(out / "table.csv")}
    assert man["parameters"] == {"seed": 1} and man["n"] == 1 and man["packages"]["numpy"]
    # a failing rerun leaves the previous complete output untouched, and no partial folder
    with pytest.raises(RuntimeError):
        with manifest.stage_output(out, "01_data_assembly", {"seed": 2}) as (tmp, extra):
            (tmp / "table.csv").write_text("half")
            raise RuntimeError("interrupted")
    assert (out / "table.csv").read_text() == "a\n1\n"
    assert json.loads((out / "manifest.json").read_text())["parameters"] == {"seed": 1}
    assert not out.with_name(out.name + ".partial").exists()


def test_missing_stage_names_the_notebook_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the earlier notebooks"):
        manifest.read_manifest(tmp_path / "02_embeddings")


def test_corrupt_manifest_is_named(tmp_path):
    from proloc_lib.core.manifest import ManifestError, read_manifest

    (tmp_path / "manifest.json").write_text('{"stage": ')
    with pytest.raises(ManifestError, match=r"manifest.json is not a valid manifest.*rerun the stage"):
        read_manifest(tmp_path)
    assert issubclass(ManifestError, UserError)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_run(out, run: int, barrier: threading.Barrier | None = None, errors=None):
    """One 'run' of a stage: three files all saying ``run``, the manifest saying it too."""
    try:
        with manifest.stage_output(out, "01_data_assembly", {"run": run}) as (tmp, extra):
            for name in ("a.txt", "b.txt", "c.txt"):
                (tmp / name).write_text(f"run {run}\n" * 1000)
                if barrier is not None and name == "a.txt":
                    barrier.wait()   # every run is half-written at the same moment
            extra["run"] = run
    except Exception as exc:  # pragma: no cover - reported by the test
        errors.append(exc)


def test_concurrent_runs_each_write_their_own_folder_and_publish_whole(tmp_path):
    out = tmp_path / "smoke" / "01_data_assembly"
    for round_ in range(4):
        barrier, errors = threading.Barrier(3), []
        threads = [threading.Thread(target=_write_run, args=(out, 10 * round_ + k, barrier, errors)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        man = manifest.read_manifest(out)
        run = man["parameters"]["run"]
        assert run in {10 * round_ + k for k in range(3)} and man["run"] == run
        # every file is the published run's, and the manifest lists exactly them with their checksums
        assert {p.name for p in out.iterdir()} == {"a.txt", "b.txt", "c.txt", "manifest.json"}
        for name in ("a.txt", "b.txt", "c.txt"):
            assert set((out / name).read_text().splitlines()) == {f"run {run}"}
            assert man["outputs"][name] == file_sha256(out / name)
    leftovers = [p.name for p in out.parent.iterdir() if p.is_dir() and p.name != out.name]
    assert leftovers == []


def test_a_failed_run_leaves_the_previous_output_and_no_temporary_folder(tmp_path):
    out = tmp_path / "01_data_assembly"
    _write_run(out, 1)
    with pytest.raises(RuntimeError):
        with manifest.stage_output(out, "01_data_assembly", {"run": 2}) as (tmp, _):
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert manifest.read_manifest(out)["parameters"] == {"run": 1}
    assert (out / "a.txt").read_text().startswith("run 1")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["01_data_assembly"]


def test_ctrl_c_during_the_swap_waits_until_the_new_output_is_in_place(tmp_path, monkeypatch):
    out = tmp_path / "01_data_assembly"
    _write_run(out, 1)
    real_publish = manifest.publish

    def interrupted_publish(src, dest):   # Ctrl-C between moving the old output away and the new in
        signal.raise_signal(signal.SIGINT)   # delivered to this thread, not to any thread of the process
        return real_publish(src, dest)

    monkeypatch.setattr(manifest, "publish", interrupted_publish)
    # Ctrl-C as a user's terminal delivers it, whatever handler an earlier test left behind
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            _write_run(out, 2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert manifest.read_manifest(out)["parameters"] == {"run": 2}      # whole, not missing
    assert (out / "c.txt").read_text().startswith("run 2")


def test_the_next_publish_finishes_a_swap_cut_short_and_removes_dead_runs_leftovers(tmp_path):
    out = tmp_path / "03_training"
    _write_run(out, 1)
    dead = _dead_pid()
    # a run killed between its two renames: its old output aside, nothing in place
    os.replace(out, tmp_path / f".03_training.old-{dead}-x1")
    (tmp_path / f".03_training.partial-{dead}-x2").mkdir()                  # a killed run's half folder
    alive = tmp_path / f".03_training.partial-{os.getpid()}-x3"           # a live run's: not touched
    alive.mkdir()
    (tmp_path / "03_training.partial").mkdir()                             # the fixed name of earlier versions
    manifest.recover(out)
    assert manifest.read_manifest(out)["parameters"] == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(["03_training", alive.name])


def test_output_checksums_and_inputs_are_recorded(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    out = tmp_path / "data" / "demo" / "01_data_assembly"
    with manifest.stage_output(out, "01_data_assembly", {"seed": 1}, [src]) as (tmp, extra):
        (tmp / "sub").mkdir()
        (tmp / "sub" / "t.csv").write_text("a\n1\n")
        extra["upstream"] = {}
    man = json.loads((out / "manifest.json").read_text())
    assert man["inputs"] == {str(src): file_sha256(src)}
    assert man["outputs"] == {"sub/t.csv": file_sha256(out / "sub" / "t.csv")} and man["upstream"] == {}


def test_library_modules_follow_imports_and_nothing_else():
    mods = manifest.library_modules("proloc_lib.stages.baselines")
    assert {"proloc_lib.stages.baselines", "proloc_lib.stages.common", "proloc_lib.training.baselines",
            "proloc_lib.core.manifest", "proloc_lib.stages"} <= set(mods)
    # what notebook 04 does not run: editing it leaves the baselines stage's code version alone
    assert not {"proloc_lib.stages.training", "proloc_lib.stages.figures", "proloc_lib.stages.runner",
                "proloc_lib.cli.run", "proloc_lib.training.loop"} & set(mods)


def test_code_version_covers_notebook_cells_but_not_their_outputs(tmp_path):
    def notebook(source, outputs=()):
        path = tmp_path / f"nb{len(list(tmp_path.iterdir()))}.ipynb"
        path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": source, "outputs": list(outputs),
                                               "metadata": {"x": len(outputs)}, "id": str(len(outputs))}]}))
        return path

    base = manifest.code_version("proloc_lib.stages.baselines", notebook(["x = 1\n"]))
    assert manifest.code_version("proloc_lib.stages.baselines", notebook(["x = 1\n"], [{"text": "1"}])) == base
    assert manifest.code_version("proloc_lib.stages.baselines", notebook(["x = 2\n"])) != base
    assert manifest.code_version("proloc_lib.stages.figures", notebook(["x = 1\n"])) != base


def test_stage_key_changes_with_each_part():
    parts = {"parameters": {"seed": 0}, "provenance": {"synthetic_images": True}, "code_version": "abc",
             "upstream": {"01_data_assembly": {"proteins.parquet": "f00"}}}
    key = manifest.stage_key(**parts)
    assert manifest.stage_key(**json.loads(json.dumps(parts))) == key
    for name, other in [("parameters", {"seed": 1}), ("provenance", {}), ("code_version", "abd"),
                        ("upstream", {"01_data_assembly": {"proteins.parquet": "f01"}})]:
        assert manifest.stage_key(**{**parts, name: other}) != key, name
