"""The demo dataset: real SCL2205 sequences, explicit drops, seeded and reproducible; every label in
every split."""
import numpy as np
import pandas as pd
import pytest

from proloc_lib.core.paths import project_path
from proloc_lib.data import demo, splits
from proloc_lib.data.labels import LabelMap, UnknownLocationError
from proloc_lib.profiles.loader import load_profile


@pytest.fixture(scope="module")
def source():
    return demo.load_scldata()


@pytest.fixture(scope="module")
def scl_label_map():
    """The SCL2205 class -> ProLoc label map of the demo (the HPA map is the `label_map` fixture)."""
    return LabelMap.load(project_path("data/mappings/scl2205_to_proloc5.yaml"))


def test_selection_drops_unmapped_classes_and_counts_them(source, scl_label_map):
    prot, rep = demo.select_proteins(source, scl_label_map, 50, seed=3, min_length=50, max_length=800)
    assert len(prot) == 50 and prot["protein_id"].is_unique
    assert (prot[scl_label_map.labels].sum(axis=1) > 0).all()
    assert prot["sequence"].str.len().between(50, 800).all()
    assert rep["dropped_no_target_label"]["Secreted"] == (source["locations"] == "Secreted").sum()
    assert rep["dropped_no_target_label_total"] == sum(rep["dropped_no_target_label"].values())


def test_same_seed_same_tables_and_images(source, scl_label_map, tmp_path):
    a, _ = demo.select_proteins(source, scl_label_map, 12, seed=5, max_length=600)
    b, _ = demo.select_proteins(source, scl_label_map, 12, seed=5, max_length=600)
    c, _ = demo.select_proteins(source, scl_label_map, 12, seed=6, max_length=600)
    pd.testing.assert_frame_equal(a, b)
    assert not a["protein_id"].equals(c["protein_id"])
    ia = demo.make_demo_images(a, scl_label_map.labels, tmp_path / "x" / "images", 2, seed=5, size=96)
    ib = demo.make_demo_images(b, scl_label_map.labels, tmp_path / "y" / "images", 2, seed=5, size=96)
    pd.testing.assert_frame_equal(ia, ib)          # same checksums, tissues, paths
    assert ia["image_id"].is_unique and len(ia) == 24
    assert (ia["path"].str.startswith("images/")).all()


def test_unknown_class_and_bad_sequence_are_named(source, scl_label_map):
    bad = pd.DataFrame({"accession": ["Q1"], "sequence": ["MKT"], "locations": ["Golgi"]})
    with pytest.raises(UnknownLocationError, match="golgi"):
        demo.select_proteins(bad, scl_label_map, 1, seed=0)
    bad = pd.DataFrame({"accession": ["Q2"], "sequence": ["MK7T"], "locations": ["Nucleus"]})
    with pytest.raises(ValueError, match="Q2"):
        demo.select_proteins(bad, scl_label_map, 1, seed=0)
    with pytest.raises(KeyError, match="sequence"):
        demo.select_proteins(bad.drop(columns="sequence"), scl_label_map, 1, seed=0)


def test_synthetic_images_are_keyed_by_seed(source, scl_label_map, tmp_path):
    """A seed's images never depend on which seeds ran before in the same folder."""
    prot, _ = demo.select_proteins(source, scl_label_map, 4, seed=5, max_length=600)
    shared = tmp_path / "shared" / "images"
    first0 = demo.make_demo_images(prot, scl_label_map.labels, shared, 2, seed=0, size=96)
    then1 = demo.make_demo_images(prot, scl_label_map.labels, shared, 2, seed=1, size=96)
    fresh1 = demo.make_demo_images(prot, scl_label_map.labels, tmp_path / "fresh" / "images", 2, seed=1, size=96)
    again0 = demo.make_demo_images(prot, scl_label_map.labels, shared, 2, seed=0, size=96)
    # seed 1 after seed 0 equals seed 1 alone: drawn with its own seed, not reused by file name
    assert then1["image_id"].tolist() == fresh1["image_id"].tolist()
    assert not set(then1["image_id"]) & set(first0["image_id"])
    assert again0["image_id"].tolist() == first0["image_id"].tolist()
    assert (then1["path"].str.fullmatch(r"images/[^/]+_seed1_\d\.jpg")).all()
    assert (first0["path"].str.fullmatch(r"images/[^/]+_seed0_\d\.jpg")).all()
    for p in then1["path"]:
        assert (shared.parent / p).is_file()


def test_images_do_not_depend_on_render_threads(source, scl_label_map, tmp_path):
    prot, _ = demo.select_proteins(source, scl_label_map, 6, seed=2, max_length=600)
    one = demo.make_demo_images(prot, scl_label_map.labels, tmp_path / "a" / "images", 2, seed=2, size=96, workers=1)
    three = demo.make_demo_images(prot, scl_label_map.labels, tmp_path / "b" / "images", 2, seed=2, size=96, workers=3)
    pd.testing.assert_frame_equal(one, three)      # same checksums and tissue draws, in protein order


@pytest.mark.parametrize("profile", ["demo", "smoke"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_label_has_proteins_in_every_split_and_fold(source, scl_label_map, profile, seed):
    """The profile's own selection and split (the split code stage 01 runs): at least 2 proteins
    of each label in train, validation and test, and in every cross-validation fold."""
    data = load_profile(profile)["data"]
    prot, rep = demo.select_proteins(source, scl_label_map, data["n_proteins"], seed, data["min_length"],
                                     data["max_length"])
    labels = scl_label_map.labels
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


def test_quota_serves_the_rarest_label_and_fills_at_random(scl_label_map):
    """Hand-made pool: 3 ER proteins among 200; a quota of 3 takes all three, the rest is random."""
    locs = ["ER"] * 3 + ["Nucleus"] * 97 + ["Cytoplasm"] * 100
    table = pd.DataFrame({"accession": [f"P{i:03d}" for i in range(200)], "sequence": "MKTAYIAKQR" * 6,
                          "locations": locs})
    table["sequence"] = [s[:50] + "ACDEFGHIKLMNPQRSTVWY"[i % 20] for i, s in enumerate(table["sequence"])]
    prot, rep = demo.select_proteins(table, scl_label_map, 15, seed=4, min_label_share=0.2)
    assert rep["label_quota"]["proteins_per_label"] == 3
    assert prot["endoplasmic reticulum"].sum() == 3 and len(prot) == 15
    assert prot["nucleus"].sum() >= 3 and prot["cytoplasm"].sum() >= 3
    again, _ = demo.select_proteins(table, scl_label_map, 15, seed=4, min_label_share=0.2)
    other, _ = demo.select_proteins(table, scl_label_map, 15, seed=5, min_label_share=0.2)
    pd.testing.assert_frame_equal(prot, again)
    assert set(prot["protein_id"]) != set(other["protein_id"])
    # no quota: a plain seeded sample, which here misses the rare label most of the time
    plain = [demo.select_proteins(table, scl_label_map, 15, seed=s,
                                  min_label_share=0.0)[0]["endoplasmic reticulum"].sum()
             for s in range(20)]
    assert np.mean(np.array(plain) == 0) > 0.5
