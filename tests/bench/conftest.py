"""What the benchmark tests share: small tables in the authors' reference test-set format."""
import pandas as pd
import pytest


def _write_reference(path, proteins):
    rows = []
    for pid, (seq, n) in proteins.items():
        for j in range(n):
            rows.append({"File Name": f"{pid}-{j}_A_1_{j}-HPA000001-nucleoplasm.jpg", "locations": "nucleoplasm",
                         "cytoplasm": 0, "endoplasmic reticulum": 0, "mitochondria": 0, "nucleus": 1,
                         "plasma membrane": 0, "Sequence": seq})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def write_reference():
    """Function (path, {ensembl id: (sequence, n_images)}) -> path: a CSV in the reference format."""
    return _write_reference
