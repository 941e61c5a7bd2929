"""``proloc run``: output folders and profile names checked before any work, a rerun skips what is up
to date and reruns what changed and what reads it, a stale input stops the run in one line, two runs
of a stage at once never mix, Ctrl-C and SIGTERM stop it in one line leaving nothing half-written.

One run of the study (the smoke profile cut down further, as a profile file) is made once and copied
for each test that reruns it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from proloc_lib.cli import main
from proloc_lib.core import manifest, paths
from proloc_lib.core.locks import lock_path, pid_alive

ROOT = Path(__file__).resolve().parents[2]
STAGES = paths.STAGES
TINY = """\
extends: smoke
description: the smoke profile cut down further, for the tests that rerun the study
data:
  n_proteins: 40
  images_per_protein: 1
  image_size: 64
training:
  cross_validation: false
  ablations: null
  base: {max_epochs: 1}
figures:
  formats: [png]
  bootstrap_resamples: 20
  permutation_resamples: 10
"""


def proloc_run(*args, wait=True):
    cmd = [sys.executable, "-m", "proloc_lib", "run", "--device", "cpu", "--no-progress", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    env.pop("PROLOC_DATA_ROOT", None)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stage_lines(stdout: str) -> dict:
    """'== tiny: 03_training.ipynb (parameters changed)' -> {'03_training': 'parameters changed'}."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("== ") and ".ipynb" in line:
            name, _, rest = line.split(": ", 1)[1].partition(".ipynb ")
            out[name] = "skipped" if rest.endswith("; skipped") else rest.strip("()")
    return out


def manifests(data: Path, profile: str = "tiny") -> dict:
    return {s: (data / profile / s / "manifest.json").read_bytes() for s in STAGES}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    (base / "tiny.yaml").write_text(TINY)
    res = proloc_run("--profile", base / "tiny.yaml", "--data-root", base / "data")
    assert res.returncode == 0, res.stderr
    assert stage_lines(res.stdout) == {s: "not built yet" for s in STAGES}
    return base


@pytest.fixture
def copy(study, tmp_path):
    """The study's profile file and data root, copied (a data root can be moved: nothing in it
    records where it is)."""
    shutil.copy(study / "tiny.yaml", tmp_path / "tiny.yaml")
    shutil.copytree(study / "data", tmp_path / "data", symlinks=True)
    return tmp_path / "tiny.yaml", tmp_path / "data"


def test_a_rerun_skips_every_stage_that_is_up_to_date(copy):
    profile, data = copy
    before = manifests(data)
    res = proloc_run("--profile", profile, "--data-root", data)
    assert res.returncode == 0, res.stderr
    assert stage_lines(res.stdout) == {s: "skipped" for s in STAGES}
    assert "== tiny: 03_training.ipynb up to date (inputs, parameters and code unchanged); skipped" in res.stdout
    assert manifests(data) == before
    # figures and executed notebooks follow the data root
    assert (data / "tiny" / "figures" / "main_table.md").is_file()
    assert sorted(p.name for p in (data / "tiny" / "executed").iterdir()) == [f"{s}.ipynb" for s in STAGES]


def test_a_training_change_reruns_training_and_what_reads_it(copy):
    """Notebook 04 reads stages 01 and 02 only: it stays up to date; 05 reads 03's new outputs."""
    profile, data = copy
    before = manifests(data)
    profile.write_text(TINY.replace("base: {max_epochs: 1}", "base: {max_epochs: 2}"))
    res = proloc_run("--profile", profile, "--data-root", data)
    assert res.returncode == 0, res.stderr
    assert stage_lines(res.stdout) == {"01_data_assembly": "skipped", "02_embeddings": "skipped",
                                       "03_training": "parameters changed", "04_baselines": "skipped",
                                       "05_figures": "inputs changed"}
    after = manifests(data)
    assert [s for s in STAGES if after[s] != before[s]] == ["03_training", "05_figures"]
    plan = json.loads(after["03_training"])["parameters"]["plan"]
    assert {r["max_epochs"] for r in plan if r["run_id"] == "fusion.corrected"} == {2}


def test_notebook_05_alone_after_01_got_another_split_is_refused(copy):
    profile, data = copy
    profile.write_text(TINY.replace("  image_size: 64\n", "  image_size: 64\n  split: {test_fraction: 0.3}\n"))
    res = proloc_run("--profile", profile, "--data-root", data, "--only", "01")
    assert res.returncode == 0 and stage_lines(res.stdout) == {"01_data_assembly": "parameters changed"}
    figures_before = (data / "tiny" / "05_figures" / "manifest.json").read_bytes()
    res = proloc_run("--profile", profile, "--data-root", data, "--only", "05")
    assert res.returncode == 2 and stage_lines(res.stdout) == {}
    assert res.stderr == (f"proloc run: {data.resolve()}/tiny/02_embeddings: made from other 01_data_assembly "
                          "outputs (images.parquet has changed since); rebuild it with `proloc run --profile "
                          f"{profile.resolve()} --seed 0 --data-root {data.resolve()} --only 02,03,04,05`\n")
    assert (data / "tiny" / "05_figures" / "manifest.json").read_bytes() == figures_before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_says_interrupted_and_leaves_nothing_half_written(copy, sig):
    profile, data = copy
    stage = data / "tiny" / "01_data_assembly"
    proc = proloc_run("--profile", profile, "--data-root", data, "--only", "01", "--force", wait=False)
    deadline, partial = time.time() + 600, []
    while not partial and proc.poll() is None and time.time() < deadline:   # stop it while it writes
        partial = list(stage.parent.glob(".01_data_assembly.partial-*"))
        time.sleep(0.02)
    assert partial, "the stage ended before it could be stopped while writing"
    kernel = int(partial[0].name.split("partial-")[1].split("-")[0])
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and err == "proloc run: interrupted\n", err
    for _ in range(50):
        if not pid_alive(kernel):
            break
        time.sleep(0.2)
    assert not pid_alive(kernel), "the kernel outlived the run"
    # the stage folder is one whole output (the previous one or, if the swap had begun, the new one)
    man = manifest.read_manifest(stage)
    assert man["outputs"] == manifest.output_checksums(stage)
    assert [p.name for p in stage.parent.iterdir() if p.name.startswith(".01_data_assembly.")
            and not p.name.endswith((".lock", ".publish"))] == []
    assert sorted(p.name for p in (data / "tiny" / "executed").iterdir()) == [f"{s}.ipynb" for s in STAGES]


def test_two_runs_of_stage_01_at_once(tmp_path):
    """The same seed: the second run is refused in one line naming the first; another seed runs
    beside them into its own folder. What is published is each run's whole."""
    data, profile = tmp_path / "data", tmp_path / "smoke-cut.yaml"
    profile.write_text(TINY)
    first = proloc_run("--profile", profile, "--data-root", data, "--only", "01", wait=False)
    other_seed = proloc_run("--profile", profile, "--data-root", data, "--only", "01", "--seed", "1", wait=False)
    lock = lock_path(paths.stage_dir("smoke-cut", "01_data_assembly", data))
    deadline = time.time() + 300
    while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = proloc_run("--profile", profile, "--data-root", data, "--only", "01")
    assert second.returncode == 1 and second.stdout == "", second.stderr
    assert second.stderr.startswith(f"proloc run: {data.resolve()}/smoke-cut/01_data_assembly is being written by "
                                    f"pid {first.pid} on ")
    assert f"`proloc run --device cpu --no-progress --profile {profile}" in second.stderr
    assert second.stderr.endswith("; run again when that run has finished, or stop it\n")
    assert second.stderr.count("\n") == 1
    for proc in (first, other_seed):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    for seed, folder in ((0, data / "smoke-cut"), (1, data / "smoke-cut" / "seed-1")):
        stage = folder / "01_data_assembly"
        man = manifest.read_manifest(stage)
        assert man["parameters"]["seed"] == seed and man["outputs"] == manifest.output_checksums(stage)
        images = pd.read_parquet(stage / "images.parquet")
        assert images["path"].str.contains(f"_seed{seed}_").all()    # each synthetic image names its seed
    assert (data / "smoke-cut" / "seed-1" / "executed" / "01_data_assembly.ipynb").is_file()


# -- checked before any work ------------------------------------------------------------------------
def run_main(argv, capsys):
    rc = main.main(["run", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_output_folders_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    rc, _, err = run_main(["--profile", "smoke", "--data-root", str(a_file)], capsys)
    assert rc == 2 and err == f"proloc run: data root {a_file} is a file, not a folder\n"
    rc, _, err = run_main(["--profile", "smoke", "--data-root", str(tmp_path / "data"), "--out",
                           str(a_file / "executed")], capsys)
    assert rc == 2 and err.startswith(f"proloc run: cannot write the folder for executed notebooks {a_file}/executed: ")
    assert err.count("\n") == 1 and not (tmp_path / "data" / "smoke").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_executed_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "executed"
    out.mkdir()
    out.chmod(0o555)
    rc, _, err = run_main(["--profile", "smoke", "--data-root", str(tmp_path / "data"), "--out", str(out)], capsys)
    assert rc == 2 and err.startswith(f"proloc run: cannot write the folder for executed notebooks {out}: ")


def test_profile_names_stay_one_folder_under_their_roots(tmp_path, capsys):
    rc, _, err = run_main(["--profile", "../../somewhere/evil", "--check"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "profile name '../../somewhere/evil'" in err
    evil = tmp_path / "evil.yaml"
    evil.write_text("extends: smoke\nprofile: ../../elsewhere\n")
    rc, _, err = run_main(["--profile", str(evil), "--check"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "profile: profile name '../../elsewhere'" in err
    mine = tmp_path / "mine.yaml"      # no profile key of its own: named after the file, not its parent
    mine.write_text("extends: smoke\n")
    rc, out, _ = run_main(["--profile", str(mine), "--check"], capsys)
    assert rc == 0 and "profile 'mine' is valid" in out
    rc, _, err = run_main(["--profile", "smoke", "--seed", "-1", "--check"], capsys)
    assert rc == 2 and "seed must be a whole number >= 0" in err


def test_seed_help_says_what_the_run_seed_controls(capsys):
    with pytest.raises(SystemExit):
        main.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "replicate of the whole study" in text and "adds s x 1000 to every training seed" in text
    assert "<data root>/<profile>/seed-<s>/" in text and "--force" in text
