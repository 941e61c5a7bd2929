"""Write small tables in the authors' reference test-set format (for the benchmark tests)."""
import pandas as pd


def write_reference(path, proteins):
    """A CSV in the reference format: {ensembl id: (sequence, n_images)}."""
    rows = []
    for pid, (seq, n) in proteins.items():
        for j in range(n):
            rows.append({"File Name": f"{pid}-{j}_A_1_{j}-HPA000001-nucleoplasm.jpg", "locations": "nucleoplasm",
                         "cytoplasm": 0, "endoplasmic reticulum": 0, "mitochondria": 0, "nucleus": 1,
                         "plasma membrane": 0, "Sequence": seq})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
