"""`bash run_all.sh --lab`: one command that opens JupyterLab on the project, as root too."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    """run_all.sh in a scratch project, a fake python that records its calls, a fake `id`."""
    shutil.copy(ROOT / "run_all.sh", tmp_path / "run_all.sh")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    log, fake, bin_dir = tmp_path / "calls.log", tmp_path / "fake-python", tmp_path / "bin"
    fake.write_text(f"""#!/usr/bin/env bash
echo "$*" >> {log}
if [ "$1" = -c ]; then echo {tmp_path}; fi
exit 0
""")
    fake.chmod(0o755)
    bin_dir.mkdir()

    def run(*args, uid=0, display=None):
        (bin_dir / "id").write_text(f"#!/usr/bin/env bash\necho {uid}\n")
        (bin_dir / "id").chmod(0o755)
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env.update({"PYTHON": str(fake), "COLAB_RELEASE_TAG": "", "PATH": f"{bin_dir}:{env['PATH']}"})
        if display:
            env["DISPLAY"] = display
        out = subprocess.run(["bash", "run_all.sh", "--no-venv", *args], capture_output=True, text=True,
                             cwd=tmp_path, env=env)
        calls = log.read_text().splitlines() if log.exists() else []
        return out, calls

    return tmp_path, run


def test_lab_as_root_headless_installs_the_lab_extra_and_allows_root(project):
    root, run = project
    out, calls = run("--lab", "--", "--port", "8890")
    assert out.returncode == 0, out.stderr
    pip = [c for c in calls if c.startswith("-m pip install")]
    assert len(pip) == 1 and pip[0].endswith("-e .[lab]")
    assert calls[-1] == f"-m jupyter lab --ServerApp.root_dir={root} --allow-root --no-browser --port 8890"
    assert any(p.name.endswith("-lab") for p in (root / ".proloc").iterdir())   # installed once: the stamp


def test_lab_as_a_user_with_a_display_opens_the_browser_without_allow_root(project):
    root, run = project
    out, calls = run("--lab", uid=1000, display=":0")
    assert out.returncode == 0, out.stderr
    assert calls[-1] == f"-m jupyter lab --ServerApp.root_dir={root}"


def test_arguments_after_the_separator_need_lab(project):
    _, run = project
    out, calls = run("--", "--port", "1")
    assert out.returncode == 2 and "use them with --lab" in out.stderr and calls == []
