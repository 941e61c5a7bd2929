"""Tests for proloc_lib.data.hpa: the authors' reference tables and hand-made fixtures; the Vislocas
tables read as the full build reads them (every one of the 548 proteins kept, shared images kept
under each of their proteins) and the authors' own test labels joined image by image."""
import numpy as np
import pandas as pd
import pytest

from proloc_lib.core.paths import PROJECT_ROOT, reference_dir
from proloc_lib.data import hpa, splits
from proloc_lib.data.hpa import (
    IMAGE_COLUMNS,
    SOURCE_LABEL_COLUMNS,
    SRC_PREFIX,
    SchemaError,
    filter_images,
    image_url,
    parse_vislocas_csv,
    protein_table,
    read_authors_csv,
)
from proloc_lib.data.labels import LABELS, UnknownLocationError
from proloc_lib.data.sequences import InvalidSequenceError

FIXTURES = PROJECT_ROOT / "tests" / "fixtures" / "hpa"


# ----------------------------------------------------------------------------- reference files

def test_mapping_reproduces_reference_label_columns_on_every_row(label_map, authors_tables):
    ref_test, ref_url = authors_tables
    raw = pd.read_csv(ref_test)
    mapped = label_map.matrix(raw["locations"])
    assert mapped.shape == (566, 5)
    np.testing.assert_array_equal(mapped, raw[LABELS].to_numpy())
    # and through the reader: the source label columns survive as src:<label>
    df = read_authors_csv(ref_test)
    np.testing.assert_array_equal(df[[SRC_PREFIX + lab for lab in LABELS]].to_numpy(),
                                  raw[LABELS].to_numpy())


def test_image_url_matches_reference_modified_url_on_every_row(authors_tables):
    ref_test, ref_url = authors_tables
    raw = pd.read_csv(ref_url, dtype=str)
    got = [image_url(a, n) for a, n in zip(raw["Antibody Id"], raw["Image Name"])]
    assert got == raw["Modified URL"].tolist()
    assert image_url("HPA005560", "15519_B_9_7.jpg") == "http://images.proteinatlas.org/5560/15519_B_9_7.jpg"


def test_image_url_rejects_malformed_antibody():
    with pytest.raises(ValueError, match="HPA-5560"):
        image_url("HPA-5560", "1_A_1_1.jpg")


def test_reference_tables_join_by_ensembl_id_and_image_name(label_map, authors_tables):
    ref_test, ref_url = authors_tables
    a = read_authors_csv(ref_test, label_map)
    u = read_authors_csv(ref_url, label_map)
    assert list(a.columns[:len(IMAGE_COLUMNS)]) == IMAGE_COLUMNS
    assert len(a) == len(u) == 566 and a["protein_id"].nunique() == 54
    # the two files list the images in different orders: row order is no key
    assert (a["image_name"] != u["image_name"]).any()
    m = a.merge(u, on=["protein_id", "image_name"], suffixes=("_a", "_u"), validate="one_to_one")
    assert len(m) == 566
    assert (m["antibody_a"] == m["antibody_u"]).all()
    assert (m["sequence_a"] == m["sequence_u"]).all()
    assert (m["url_a"] == m["url_u"]).all()
    # the locations in a File Name are the HPA metadata's locations for that image
    assert (m["locations_a"] == m["locations_u"]).all()
    assert (m[[f"{lab}_a" for lab in LABELS]].to_numpy() == m[[f"{lab}_u" for lab in LABELS]].to_numpy()).all()


def test_reference_filters_and_protein_table(label_map, authors_tables):
    ref_test, ref_url = authors_tables
    u = read_authors_csv(ref_url)
    kept, report = filter_images(u)
    assert report["n_in"] == 566 and report["n_kept"] == 566  # the authors' set already passed them
    assert report["dropped"] == {"if_verification": 0, "intensity": 0, "quantity": 0}
    proteins = protein_table(kept, label_map)
    assert len(proteins) == 54 and proteins["protein_id"].is_unique
    assert (proteins["n_location_sets"] == 2).sum() == 7
    row = proteins.set_index("protein_id").loc["ENSG00000154229"]  # cytosol | plasma membrane;cytosol
    assert row["cytoplasm"] == 1 and row["plasma membrane"] == 1 and row["n_location_sets"] == 2


# ----------------------------------------------------------------------------- readers

def test_read_file_name_layout(label_map):
    df = read_authors_csv(FIXTURES / "authors_file_name.csv", label_map)
    assert len(df) == 4
    r = df.iloc[2]
    assert (r["protein_id"], r["image_name"], r["antibody"]) == ("ENSG00000000102", "2002_B_3_4.jpg", "CAB000123")
    assert r["locations"] == "nucleoplasm;plasma membrane;cytosol"  # spaces and ';' inside the name
    assert r["url"] == "http://images.proteinatlas.org/123/2002_B_3_4.jpg"
    assert [r[lab] for lab in LABELS] == [1, 0, 0, 1, 1]
    assert df.iloc[3]["endoplasmic reticulum"] == 1  # golgi apparatus -> ER under this mapping
    assert df[["protein_name", "tissue", "intensity", "if_verification"]].isna().all().all()
    assert df["source_row"].tolist() == [0, 1, 2, 3]


def test_read_metadata_layout(label_map):
    df = read_authors_csv(FIXTURES / "authors_metadata.csv", label_map)
    assert len(df) == 6
    r = df.iloc[0]
    assert r["protein_name"] == "GENEA" and r["antibody"] == "HPA000201"
    assert r["url"] == "http://images.proteinatlas.org/201/5001_A_1_1.jpg"
    assert r["intensity"] == "strong;weak" and r["quantity"] == "<25%;>75%"
    assert pd.isna(df.iloc[4]["protein_name"])
    assert pd.isna(df.iloc[5]["if_verification"])
    assert df.iloc[5]["endoplasmic reticulum"] == 1  # vesicles -> ER


def test_missing_column_is_named(tmp_path):
    df = pd.read_csv(FIXTURES / "authors_metadata.csv", dtype=str).drop(columns=["Sequence"])
    df.to_csv(tmp_path / "no_seq.csv", index=False)
    with pytest.raises(SchemaError, match=r"no_seq\.csv.*'Sequence'"):
        read_authors_csv(tmp_path / "no_seq.csv")


def test_renamed_column_is_pointed_out(tmp_path):
    df = pd.read_csv(FIXTURES / "authors_metadata.csv", dtype=str).rename(columns={"Antibody Id": "Antibody ID"})
    df.to_csv(tmp_path / "renamed.csv", index=False)
    with pytest.raises(KeyError, match=r"renamed\.csv.*'Antibody Id' \(renamed\? found 'Antibody ID'\)"):
        read_authors_csv(tmp_path / "renamed.csv")


def test_unknown_layout(tmp_path):
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ValueError, match="File Name"):
        read_authors_csv(tmp_path / "other.csv")


def test_unknown_location_names_row(tmp_path, label_map, edit_csv):
    path = edit_csv(FIXTURES / "authors_metadata.csv", tmp_path / "unknown.csv",
                 locations={3: "mitochondria;moon base"})
    with pytest.raises(UnknownLocationError, match=r"'moon base' at .*unknown\.csv row 3"):
        read_authors_csv(path, label_map)
    read_authors_csv(path)  # without a mapping the table still reads (the audit reports it)


@pytest.mark.parametrize("bad,what", [("", "missing"), ("MKT4Y1", "non-amino-acid")])
def test_bad_sequence_names_row(tmp_path, bad, what, edit_csv):
    path = edit_csv(FIXTURES / "authors_file_name.csv", tmp_path / "badseq.csv", Sequence={1: bad})
    with pytest.raises(InvalidSequenceError, match=rf"{what}.*badseq\.csv row 1"):
        read_authors_csv(path)


def test_malformed_file_name_names_row(tmp_path, edit_csv):
    path = edit_csv(FIXTURES / "authors_file_name.csv", tmp_path / "badname.csv",
                 **{"File Name": {2: "ENSG00000000102_2002_B_3_4.jpg"}})
    with pytest.raises(ValueError, match=r"badname\.csv row 2: File Name"):
        read_authors_csv(path)


def test_parse_vislocas_layout(tmp_path, label_map):
    # written as Vislocas' prepareData/IHC code writes data_train/data_test.csv: with the pandas
    # index, URL = the local HPA path, ten 0/1 columns of its own merged classes, no sequence
    pd.DataFrame({
        "Protein Name": ["GENE1"], "Protein Id": ["ENSG00000000401.7"], "Antibody Id": ["HPA000401"],
        "Reliability Verification": ["enhanced"], "Tissue": ["Liver"], "Organ": ["Liver"],
        "Staining Level": ["high"], "Intensity Level": ["strong"], "Quantity": [">75%"],
        "SnomedParameters": ["Normal tissue, NOS"],
        "URL": ["ENSG00000000401/Liver/Liver/HPA000401/7001_A_1_1.jpg"], "IF Verification": ["enhanced"],
        "locations": ["Nucleoplasm; Cytosol"], "IF Organ": ["Liver"],
        **{c: [int(c in ("cytoplasm", "nucleus"))] for c in SOURCE_LABEL_COLUMNS},
    }, index=[4711]).to_csv(tmp_path / "data_test.csv", index=True)
    df = parse_vislocas_csv(tmp_path / "data_test.csv", label_map)
    r = df.iloc[0]
    assert (r["tissue"], r["organ"], r["intensity"], r["quantity"], r["if_verification"]) == \
        ("Liver", "Liver", "strong", ">75%", "enhanced")
    assert r["src:cytoplasm"] == 1 and r["src:vesicles"] == 0
    assert r["protein_id"] == "ENSG00000000401"  # Ensembl version dropped
    assert r["image_name"] == "7001_A_1_1.jpg"
    assert r["url"] == "http://images.proteinatlas.org/401/7001_A_1_1.jpg"
    assert r["locations"] == "nucleoplasm;cytosol" and pd.isna(r["sequence"])
    assert r["cytoplasm"] == 1 and r["nucleus"] == 1

    # a full URL in the URL column is taken as it is
    pd.DataFrame({"Protein Id": ["ENSG00000000402"], "Antibody Id": ["HPA000402"],
                  "URL": ["https://example.org/402/7002_A_1_1.jpg"], "locations": ["nucleus"]}
                 ).to_csv(tmp_path / "full_url.csv", index=False)
    r = parse_vislocas_csv(tmp_path / "full_url.csv").iloc[0]
    assert (r["url"], r["image_name"]) == ("https://example.org/402/7002_A_1_1.jpg", "7002_A_1_1.jpg")

    pd.DataFrame({"gene": ["x"], "img": ["y"]}).to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(SchemaError, match=r"odd\.csv.*'Protein Id'.*found columns \['gene', 'img'\].*expected"):
        parse_vislocas_csv(tmp_path / "odd.csv")


# ----------------------------------------------------------------------------- filters, proteins

def test_filters_count_what_each_drops():
    df = read_authors_csv(FIXTURES / "authors_metadata.csv")
    kept, report = filter_images(df)
    assert report["dropped"] == {"if_verification": 2, "intensity": 1, "quantity": 1}
    assert report["n_in"] == 6 and report["n_kept"] == 2
    assert kept["image_name"].tolist() == ["5001_A_1_1.jpg", "5003_C_1_1.jpg"]  # '75%-25%' is not '>75%'
    assert report["n_proteins_kept"] == 2

    kept, report = filter_images(df, if_verification=None, intensity="moderate", quantity=None)
    assert report["dropped"] == {"intensity": 4} and kept["image_name"].tolist() == ["5002_B_1_1.jpg", "5003_C_1_1.jpg"]
    assert report["thresholds"]["if_verification"] is None


def test_filters_need_metadata():
    df = read_authors_csv(FIXTURES / "authors_file_name.csv")
    with pytest.raises(ValueError, match="if_verification=None"):
        filter_images(df)
    kept, report = filter_images(df, None, None, None)
    assert len(kept) == 4 and report["dropped"] == {}


def test_protein_table_unions_location_sets(label_map):
    df = read_authors_csv(FIXTURES / "audit_planted.csv")
    proteins = protein_table(df.drop_duplicates(["protein_id", "image_name"]), label_map).set_index("protein_id")
    assert len(proteins) == 5
    p = proteins.loc["ENSG00000000301"]  # nucleoplasm | nucleoplasm;cytosol
    assert (p["n_location_sets"], p["cytoplasm"], p["nucleus"], p["n_images"]) == (2, 1, 1, 2)
    assert proteins.loc["ENSG00000000302", "antibodies"] == "HPA000302;HPA000303"
    assert proteins.loc["ENSG00000000305", "n_location_sets"] == 1
    assert proteins["seq_hash"].str.len().eq(32).all() and proteins["uniprot"].isna().all()

    clash = df.copy()
    clash.loc[clash.index[0], "sequence"] = "MKTAYIAK"
    with pytest.raises(InvalidSequenceError, match="ENSG00000000301: 2 distinct sequences"):
        protein_table(clash, label_map)


# ----------------------------------------------------------------------------- the Vislocas tables, whole

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
    assert (set(joined["benchmark_split"]) == {"test"}
            and out.loc[out["benchmark_split"] == "train", cols].isna().all().all())
    # 26 images of 3 proteins (ARHGEF5, PSME3, NFIA) carry other labels in the authors' table
    differ = (joined[cols].to_numpy(dtype=int) != joined[LABELS].to_numpy(dtype=int)).any(axis=1)
    assert rep["images_differing"] == differ.sum() == 26 and rep["proteins_differing"] == 3
    assert set(joined.loc[differ, "protein_name"]) == {"ARHGEF5", "PSME3", "NFIA"}
    assert rep["per_label"] == {"cytoplasm": 8, "endoplasmic reticulum": 0, "mitochondria": 0, "nucleus": 0,
                                "plasma membrane": 18}
    # within a protein the authors' label rows are a re-sorting: the protein's union is unchanged
    union = lambda c: joined.groupby("protein_id")[c].max().to_numpy(dtype=int)  # noqa: E731
    np.testing.assert_array_equal(union(cols), union(LABELS))
