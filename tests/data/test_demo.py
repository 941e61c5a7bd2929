"""The demo dataset: real SCL2205 sequences, explicit drops, seeded and reproducible."""
import pandas as pd
import pytest

from proloc_lib.core.paths import project_path
from proloc_lib.data import demo
from proloc_lib.data.labels import LabelMap, UnknownLocationError


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
