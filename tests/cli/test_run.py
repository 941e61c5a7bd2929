"""`proloc run`: its argument checks, output folders and profile names checked before any work, offline
on the full profile, --gpus N and torchrun; a rerun skips what is up to date and reruns what changed
and what reads it, a stale input stops the run in one line, two runs of a stage at once never mix,
Ctrl-C and SIGTERM stop it in one line leaving nothing half-written; run_all.sh (its argument checks,
its install stamp, --gpus, the CI overlays it calls).

One run of the study (the smoke profile cut down further, as a profile file) is made once and copied
for each test that reruns it."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from proloc_lib.cli import run as run_cli
from proloc_lib.cli.main import main
from proloc_lib.core import manifest, paths
from proloc_lib.core.locks import lock_path, pid_alive
from proloc_lib.core.paths import PROJECT_ROOT as ROOT
from proloc_lib.stages import runner


@pytest.mark.parametrize("argv, text", [
    (["run", "--seed"], "--seed: expected one argument"),
    (["run", "--seed", "abc"], "invalid int value: 'abc'"),
    (["run", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["run", "--profile", "nope"], "no profile 'nope'"),
    (["run", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "--device", "cuda:x"], "unknown device 'cuda:x'"),
    (["run", "--only", "07"], "no notebook numbered 07"),
])
def test_run_rejects_bad_arguments_before_any_work(argv, text, tmp_path, run_proloc):
    rc, out, err = run_proloc([*argv, "--out", str(tmp_path / "executed")])
    assert rc == 2 and err.count("\n") == 1 and text in err and "Traceback" not in err
    assert not (tmp_path / "executed").exists()


@pytest.mark.offline
def test_offline_full_profile_ends_with_one_short_line(tmp_path):
    """`proloc run --profile full` offline: the notebook's own one-line error, exit 1, nothing written."""
    out_dir = tmp_path / "executed"
    out = subprocess.run([sys.executable, "-m", "proloc_lib", "run", "--profile", "full", "--only", "01",
                          "--no-progress", "--out", str(out_dir), "--data-root", str(tmp_path / "data")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    err_lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1, out.stderr
    assert len(err_lines) == 1 and "OfflineError: cannot reach" in err_lines[0], out.stderr
    assert "Traceback" not in out.stderr and len(err_lines[0]) < 700
    assert not (out_dir / "01_data_assembly.ipynb").exists() and (out_dir / "01_data_assembly.failed.ipynb").exists()
    assert not (tmp_path / "data" / "full" / "01_data_assembly").exists()


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
  configurations: {corrected: {patience: 1}}   # no more than max_epochs
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
def test_output_folders_that_cannot_be_written_are_refused_before_any_work(tmp_path, run_proloc):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    rc, _, err = run_proloc(["run", "--profile", "smoke", "--data-root", str(a_file)])
    assert rc == 2 and err == f"proloc run: data root {a_file} is a file, not a folder\n"
    rc, _, err = run_proloc(["run", "--profile", "smoke", "--data-root", str(tmp_path / "data"), "--out",
                           str(a_file / "executed")])
    assert rc == 2 and err.startswith(f"proloc run: cannot write the folder for executed notebooks {a_file}/executed: ")
    assert err.count("\n") == 1 and not (tmp_path / "data" / "smoke").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_executed_folder_is_refused(tmp_path, run_proloc):
    out = tmp_path / "executed"
    out.mkdir()
    out.chmod(0o555)
    rc, _, err = run_proloc(["run", "--profile", "smoke", "--data-root", str(tmp_path / "data"), "--out", str(out)])
    assert rc == 2 and err.startswith(f"proloc run: cannot write the folder for executed notebooks {out}: ")


def test_profile_names_stay_one_folder_under_their_roots(tmp_path, run_proloc):
    rc, _, err = run_proloc(["run", "--profile", "../../somewhere/evil", "--check"])
    assert rc == 2 and err.count("\n") == 1 and "profile name '../../somewhere/evil'" in err
    evil = tmp_path / "evil.yaml"
    evil.write_text("extends: smoke\nprofile: ../../elsewhere\n")
    rc, _, err = run_proloc(["run", "--profile", str(evil), "--check"])
    assert rc == 2 and err.count("\n") == 1 and "profile: profile name '../../elsewhere'" in err
    mine = tmp_path / "mine.yaml"      # no profile key of its own: named after the file, not its parent
    mine.write_text("extends: smoke\n")
    rc, out, _ = run_proloc(["run", "--profile", str(mine), "--check"])
    assert rc == 0 and "profile 'mine' is valid" in out
    rc, _, err = run_proloc(["run", "--profile", "smoke", "--seed", "-1", "--check"])
    assert rc == 2 and "seed must be a whole number >= 0" in err


def test_seed_help_says_what_the_run_seed_controls(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "replicate of the whole study" in text and "adds s x 1000 to every training seed" in text
    assert "<data root>/<profile>/seed-<s>/" in text and "--force" in text


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
    assert (out.returncode == 0
            and log.read_text().splitlines()[-1] == "-m proloc_lib dry-run --profile full --device cuda")


def test_ci_overlays_cover_the_lowest_admitted_transformers():
    """CI reruns the encoder tests under the lowest transformers pyproject admits and under 5.17
    (5.10-5.19 reject an empty sentencepiece normaliser table): the overlay pins must follow the bound."""
    deps = (ROOT / "pyproject.toml").read_text()
    lowest = re.search(r'"transformers>=([0-9.]+)"', deps).group(1)
    script = (ROOT / ".ci" / "transformers_versions.sh").read_text()
    versions = re.findall(r'^\s+"([0-9.]+)\|transformers==([0-9.]+) ', script, flags=re.M)
    assert all(a == b for a, b in versions)
    assert {v for v, _ in versions} >= {lowest if lowest.count(".") == 2 else f"{lowest}.0", "5.17.0"}
    assert "bash .ci/transformers_versions.sh" in (ROOT / "run_all.sh").read_text()


# -- --gpus N: notebook 03's training ranks (training.distributed) -----------------------------------
@pytest.fixture
def notebooks_run(monkeypatch):
    """Record the notebooks `proloc run` would execute (every stage taken as not built yet), with their
    parameters and environment."""
    calls = []
    monkeypatch.setattr(runner, "stage_status", lambda *a, **k: "not built yet")
    monkeypatch.setattr(runner, "execute_notebook", lambda book, dest, params, progress, env=None: calls.append(
        (book.name, params, {k: os.environ.get(k) for k in ("LOCAL_RANK", "MASTER_PORT", "WORLD_SIZE")})))
    return calls


def _run(*argv, tmp_path):
    return run_cli.run_command(["--profile", "smoke", "--device", "cpu", "--out", str(tmp_path), "--no-progress",
                                "--data-root", str(tmp_path / "data"), *argv])


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


def test_run_all_passes_gpus_on(project_copy):
    log, fake = project_copy / "calls.log", project_copy / "fake-python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n[ "$1" = -c ] && echo {project_copy}\nexit 0\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "COLAB_RELEASE_TAG": "fake-colab"}
    out = subprocess.run(["bash", "run_all.sh", "--profile", "smoke", "--gpus", "4"], capture_output=True, text=True,
                         cwd=project_copy, env=env)
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines()[-1] == "-m proloc_lib run --profile smoke --seed 0 --device auto --gpus 4"
    out = subprocess.run(["bash", "run_all.sh", "--gpus", "0"], capture_output=True, text=True, cwd=project_copy,
                         env=env)
    assert out.returncode == 2 and out.stderr == "run_all.sh: --gpus must be a whole number >= 1, got '0'\n"
