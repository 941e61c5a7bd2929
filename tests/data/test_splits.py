"""Split helpers: the count of test proteins with a homolog among the proteins trained on."""
import numpy as np
import pandas as pd
import pytest

from proloc_lib.data import splits
from proloc_lib.data.labels import LABELS
from proloc_lib.data.mirror import standin_sequence

pytest.importorskip("parasail")


def _mutate(seq: str, identity: float, rng) -> str:
    s = list(seq)
    for i in rng.choice(len(s), int(round((1 - identity) * len(s))), replace=False):
        s[i] = "W" if s[i] != "W" else "C"
    return "".join(s)


def test_nearest_training_homologs_counts_test_proteins_with_a_close_train_protein():
    rng = np.random.default_rng(0)
    base = {f"g{i}": standin_sequence(f"g{i}")[:300] for i in range(6)}
    rows = [  # two test proteins with a homolog in train (60%) or validation (45%), two without
        ("T1", "test", _mutate(base["g0"], 0.6, rng)), ("A", "train", base["g0"]),
        ("T2", "test", _mutate(base["g1"], 0.45, rng)), ("B", "val", base["g1"]),
        ("T3", "test", base["g2"]), ("T4", "test", base["g3"]),
        ("C", "train", base["g4"]), ("D", "train", base["g5"]),
    ]
    proteins = pd.DataFrame([{"protein_id": p, "protein_name": f"name {p}", "split": s, "sequence": q,
                              "sequence_source": "standin" if p in "CD" else "uniprot", **{lab: 1 for lab in LABELS}}
                             for p, s, q in rows])
    rep = splits.nearest_training_homologs(proteins, identity=0.3)
    assert rep["test_proteins"] == 4 and rep["compared_with"] == 4 and rep["at_or_above"] == 2
    got = {p["test"]: (p["train"], p["identity"]) for p in rep["pairs"]}
    assert set(got) == {"T1", "T2"} and got["T1"][0] == "A" and got["T2"][0] == "B"
    assert 0.55 < got["T1"][1] < 0.65 and 0.4 < got["T2"][1] < 0.5
    assert rep["pairs"][0]["test"] == "T1" and rep["pairs"][0]["test_name"] == "name T1"   # closest first
    assert rep["standin_sequences"] == 2 and "needle" in rep["aligner"]
    # at a higher threshold only the 60% pair counts
    assert splits.nearest_training_homologs(proteins, identity=0.5)["at_or_above"] == 1
