"""The demo's protein choice: every label in every split, seeded."""
import numpy as np
import pandas as pd
import pytest

from proloc_lib.core.paths import project_path
from proloc_lib.data import demo, splits
from proloc_lib.data.labels import LabelMap
from proloc_lib.profiles.loader import load_profile


@pytest.fixture(scope="module")
def source():
    return demo.load_scldata()


@pytest.fixture(scope="module")
def label_map():
    return LabelMap.load(project_path("data/mappings/scl2205_to_proloc5.yaml"))


@pytest.mark.parametrize("profile", ["demo", "smoke"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_label_has_proteins_in_every_split_and_fold(source, label_map, profile, seed):
    """The profile's own selection and split (the split code stage 01 runs): at least 2 proteins
    of each label in train, validation and test, and in every cross-validation fold."""
    data = load_profile(profile)["data"]
    prot, rep = demo.select_proteins(source, label_map, data["n_proteins"], seed, data["min_length"],
                                     data["max_length"])
    labels = label_map.labels
    assert len(prot) == data["n_proteins"] and prot["protein_id"].is_unique
    # SCL2205 holds ER on about 1% of the proteins: without the quota a sample this size has one or none
    assert min(rep["label_counts"].values()) >= rep["label_quota"]["proteins_per_label"]
    split, _ = splits.split_proteins(prot, None, labels, data["split"], seed)
    per_split = prot[labels].groupby(split.to_numpy()).sum()
    assert set(per_split.index) == {"train", "val", "test"}
    assert (per_split >= 2).all().all(), per_split
    folds = splits.assign_folds(prot, labels, data["split"]["folds"], seed)
    per_fold = prot[labels].groupby(np.asarray(folds)).sum()
    assert len(per_fold) == data["split"]["folds"] and (per_fold >= 2).all().all(), per_fold


def test_quota_serves_the_rarest_label_and_fills_at_random(label_map):
    """Hand-made pool: 3 ER proteins among 200; a quota of 3 takes all three, the rest is random."""
    locs = ["ER"] * 3 + ["Nucleus"] * 97 + ["Cytoplasm"] * 100
    table = pd.DataFrame({"accession": [f"P{i:03d}" for i in range(200)], "sequence": "MKTAYIAKQR" * 6,
                          "locations": locs})
    table["sequence"] = [s[:50] + "ACDEFGHIKLMNPQRSTVWY"[i % 20] for i, s in enumerate(table["sequence"])]
    prot, rep = demo.select_proteins(table, label_map, 15, seed=4, min_label_share=0.2)
    assert rep["label_quota"]["proteins_per_label"] == 3
    assert prot["endoplasmic reticulum"].sum() == 3 and len(prot) == 15
    assert prot["nucleus"].sum() >= 3 and prot["cytoplasm"].sum() >= 3
    again, _ = demo.select_proteins(table, label_map, 15, seed=4, min_label_share=0.2)
    other, _ = demo.select_proteins(table, label_map, 15, seed=5, min_label_share=0.2)
    pd.testing.assert_frame_equal(prot, again)
    assert set(prot["protein_id"]) != set(other["protein_id"])
    # no quota: a plain seeded sample, which here misses the rare label most of the time
    plain = [demo.select_proteins(table, label_map, 15, seed=s, min_label_share=0.0)[0]["endoplasmic reticulum"].sum()
             for s in range(20)]
    assert np.mean(np.array(plain) == 0) > 0.5
