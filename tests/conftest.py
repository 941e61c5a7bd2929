import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers (reference_csv.py, test_download.py)


@pytest.fixture
def reference_dir():
    if not (REFERENCE / "proloc_ihs_test.csv").exists():
        pytest.skip(f"reference files not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture
def offline():
    """Skip where zenodo.org answers: the offline behaviour of the full profile cannot be checked there."""
    import requests

    try:
        requests.head("https://zenodo.org", timeout=3)
    except requests.RequestException:
        return
    pytest.skip("this machine is online; the offline behaviour cannot be checked here")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Run 01..05 once on `smoke` into a temporary data and figures root, as `proloc run` does.
    Returns (stage folders, figures folder, executed notebooks)."""
    from proloc_lib.stages.runner import execute_notebook

    base = tmp_path_factory.mktemp("smoke")
    data_root, fig_root, executed = base / "data", base / "figures", base / "executed"
    executed.mkdir()
    for path in sorted((ROOT / "notebooks").glob("0[1-5]_*.ipynb")):
        params = {"profile": "smoke", "seed": 0, "device": "cpu", "data_root": str(data_root)}
        if path.stem == "05_figures":
            params["figures_root"] = str(fig_root)
        execute_notebook(path, executed / path.name, params, progress=False)
    return data_root / "smoke", fig_root / "smoke", executed
