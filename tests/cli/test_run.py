"""``proloc run --gpus N`` (and the same under ``torchrun --nproc_per_node N``): notebook 03 gets
N training ranks, the other notebooks run as before; bad values are one line before any work."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from proloc_lib.cli import run as run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notebooks_run(monkeypatch, tmp_path):
    """Record the notebooks `proloc run` would execute, with their parameters and environment."""
    calls = []
    monkeypatch.setattr(run_cli, "execute_notebook", lambda book, dest, params, progress: calls.append(
        (book.name, params, {k: os.environ.get(k) for k in ("LOCAL_RANK", "MASTER_PORT", "WORLD_SIZE")})))
    return calls


def _run(*argv, tmp_path):
    return run_cli.run_command(["--profile", "smoke", "--device", "cpu", "--out", str(tmp_path), "--no-progress",
                                *argv])


def test_gpus_reach_notebook_03_only(notebooks_run, tmp_path):
    assert _run("--gpus", "2", "--only", "02,03", tmp_path=tmp_path) == 0
    assert [(name, params.get("gpus")) for name, params, _ in notebooks_run] == \
        [("02_embeddings.ipynb", None), ("03_training.ipynb", 2)]
    notebooks_run.clear()
    assert _run("--only", "03", tmp_path=tmp_path) == 0
    assert "gpus" not in notebooks_run[0][1]   # one process: the notebook's own default


@pytest.mark.parametrize("argv, text", [(["--gpus", "0"], "--gpus: give a whole number >= 1, not '0'"),
                                        (["--gpus", "two"], "--gpus: give a whole number >= 1, not 'two'")])
def test_bad_gpus_are_one_line(argv, text, notebooks_run, tmp_path, capsys):
    assert _run(*argv, tmp_path=tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err and not notebooks_run


def test_under_torchrun_rank_0_runs_the_notebooks_with_every_rank_and_the_others_end(notebooks_run, tmp_path,
                                                                                   monkeypatch, capsys):
    torchrun = {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": "29500",
                "TORCHELASTIC_RUN_ID": "x"}
    for k, v in torchrun.items():
        monkeypatch.setenv(k, v)
    assert _run("--only", "03", tmp_path=tmp_path) == 0
    assert not notebooks_run and "rank 1 of 2" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert _run("--only", "03", tmp_path=tmp_path) == 0
    (name, params, env), = notebooks_run
    assert params["gpus"] == 2 and env == {"LOCAL_RANK": None, "MASTER_PORT": None, "WORLD_SIZE": None}
    for k, v in torchrun.items():   # the notebooks' kernels start without torchrun's variables
        monkeypatch.setenv(k, v)
    assert _run("--gpus", "3", tmp_path=tmp_path) == 2
    assert "--gpus 3 under torchrun --nproc_per_node 2" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _run(tmp_path=tmp_path) == 2
    assert "trains on the GPUs of one node" in capsys.readouterr().err


def test_run_all_passes_gpus_on(tmp_path):
    shutil.copy(ROOT / "run_all.sh", tmp_path / "run_all.sh")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    log, fake = tmp_path / "calls.log", tmp_path / "fake-python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n[ "$1" = -c ] && echo {tmp_path}\nexit 0\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "COLAB_RELEASE_TAG": "fake-colab"}
    out = subprocess.run(["bash", "run_all.sh", "--profile", "smoke", "--gpus", "4"], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines()[-1] == "-m proloc_lib run --profile smoke --seed 0 --device auto --gpus 4"
    out = subprocess.run(["bash", "run_all.sh", "--gpus", "0"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 2 and out.stderr == "run_all.sh: --gpus must be a whole number >= 1, got '0'\n"
