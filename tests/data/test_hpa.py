"""The Vislocas tables and the authors' test table, read as the full build reads them: every one of
the 548 proteins kept, shared images kept under each of their proteins, and the authors' own
test labels joined image by image."""
import numpy as np
import pandas as pd
import pytest

from proloc_lib.core.paths import reference_dir
from proloc_lib.data import hpa, splits
from proloc_lib.data.labels import LABELS

# paralogs whose HPA images are listed under each of them in data_train.csv (one antibody each)
SHARED = {("HNRNPF", "HNRNPH1", "HNRNPH2"): 12, ("RPL10", "RPL10L"): 12, ("SET", "SETSIP"): 17,
          ("U2AF1", "U2AF1L5"): 6}
ONCE_DROPPED = {"HNRNPF", "HNRNPH1", "RPL10L", "SETSIP", "U2AF1L5"}


@pytest.fixture(scope="module")
def tables():
    vis = reference_dir() / "vislocas"
    if not (vis / "data_train.csv").exists():
        pytest.skip(f"Vislocas tables not found at {vis}")
    out = []
    for name in ("data_train.csv", "data_test.csv"):
        t = hpa.parse_vislocas_csv(vis / name).assign(benchmark_split=name[5:-4])
        for lab in LABELS:
            t[lab] = t[hpa.SRC_PREFIX + lab]
        out.append(t)
    return pd.concat(out, ignore_index=True)


def test_every_protein_of_the_tables_is_kept_and_labelled(tables):
    images, rep = hpa.dedup_images(tables, LABELS)
    assert tables["protein_id"].nunique() == 548
    assert images["protein_id"].nunique() == 548                    # none lost to shared images
    assert rep["unique_images"] == 5169 + 566 == images["image_key"].nunique()
    # one row per image and protein: the 47 shared train images add 59 rows (5,169 + 59 = 5,228)
    per_file = images.groupby("benchmark_split").size().to_dict()
    assert per_file == {"train": 5228, "test": 566} and rep["image_protein_rows"] == 5794
    assert rep["duplicate_rows"] == len(tables) - 5794 and rep["label_disagreements_within_duplicates"] == 0
    # every protein has at least one of the five labels (none has "none of the five")
    assert (images.groupby("protein_id")[LABELS].max().sum(axis=1) > 0).all()
    names = set(images["protein_name"])
    assert ONCE_DROPPED <= names
    groups = {tuple(g["proteins"]): g["images"] for g in rep["shared_image_groups"]}
    assert {tuple(sorted(k)): v for k, v in groups.items()} == SHARED and rep["shared_images"] == 47


def test_shared_images_link_their_proteins_into_one_group(tables):
    images, _ = hpa.dedup_images(tables, LABELS)
    images = images.assign(image_id=images["image_key"])      # stand-in for the checksum: one per image
    proteins = images.drop_duplicates("protein_id")[["protein_id", "protein_name"]].assign(
        seq_hash=lambda d: d["protein_id"])                    # distinct sequences: links come from images
    groups = splits.link_groups(proteins, images.drop(columns="antibody"))
    by_name = dict(zip(proteins["protein_name"], groups))
    for members in SHARED:
        assert len({by_name[m] for m in members}) == 1
    assert len({by_name[m] for m in ("SET", "RPL10")}) == 2
    # an image on two sides is a leak even when no antibody says so
    side = {p: ("test" if by_name[n] == by_name["SETSIP"] and n == "SETSIP" else "train")
            for p, n in zip(proteins["protein_id"], proteins["protein_name"])}
    with pytest.raises(splits.SplitLeakError, match="images on two sides"):
        splits.check_disjoint(proteins.assign(split=proteins["protein_id"].map(side)),
                              images.drop(columns="antibody"))


def test_the_authors_test_labels_join_image_by_image(tables):
    images, _ = hpa.dedup_images(tables, LABELS)
    authors = hpa.read_authors_csv(reference_dir() / "proloc_ihs_test.csv")
    out, rep = hpa.join_authors_labels(images, authors, LABELS)
    cols = [hpa.AUTHORS_PREFIX + lab for lab in LABELS]
    assert rep["image_rows_joined"] == 566 and rep["table_rows_without_image"] == 0
    joined = out[out[cols].notna().all(axis=1)]
    assert set(joined["benchmark_split"]) == {"test"} and out.loc[out["benchmark_split"] == "train", cols].isna().all().all()
    # 26 images of 3 proteins (ARHGEF5, PSME3, NFIA) carry other labels in the authors' table
    differ = (joined[cols].to_numpy(dtype=int) != joined[LABELS].to_numpy(dtype=int)).any(axis=1)
    assert rep["images_differing"] == differ.sum() == 26 and rep["proteins_differing"] == 3
    assert set(joined.loc[differ, "protein_name"]) == {"ARHGEF5", "PSME3", "NFIA"}
    assert rep["per_label"] == {"cytoplasm": 8, "endoplasmic reticulum": 0, "mitochondria": 0, "nucleus": 0,
                                "plasma membrane": 18}
    # within a protein the authors' label rows are a re-sorting: the protein's union is unchanged
    union = lambda c: joined.groupby("protein_id")[c].max().to_numpy(dtype=int)  # noqa: E731
    np.testing.assert_array_equal(union(cols), union(LABELS))
