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
