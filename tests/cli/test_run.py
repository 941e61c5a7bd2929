"""`proloc run` (its argument checks, offline on the full profile) and run_all.sh (its argument checks,
its install stamp, the CI overlays it calls)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from proloc_lib.core.paths import PROJECT_ROOT as ROOT


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
    deps = (ROOT / "pyproject.toml").read_text()
    lowest = re.search(r'"transformers>=([0-9.]+)"', deps).group(1)
    script = (ROOT / ".ci" / "transformers_versions.sh").read_text()
    versions = re.findall(r'^\s+"([0-9.]+)\|transformers==([0-9.]+) ', script, flags=re.M)
    assert all(a == b for a, b in versions)
    assert {v for v, _ in versions} >= {lowest if lowest.count(".") == 2 else f"{lowest}.0", "5.17.0"}
    assert "bash .ci/transformers_versions.sh" in (ROOT / "run_all.sh").read_text()
