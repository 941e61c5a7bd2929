"""The audit of HPA tables (proloc_lib.data.audit): the authors' reference tables and planted problems."""
import pandas as pd
import pytest

from proloc_lib.cli.main import main as proloc
from proloc_lib.core.paths import PROJECT_ROOT
from proloc_lib.data.audit import audit, format_audit
from proloc_lib.data.hpa import SchemaError, TableError, check_csv_file

FIXTURES = PROJECT_ROOT / "tests" / "fixtures" / "hpa"


def test_reference_audit_and_cli(label_map, capsys, authors_tables):
    ref_test, ref_url = authors_tables
    report = audit([ref_test, ref_url], label_map)
    assert report["disagreeing_rows"] == []  # the mapping reproduces the label columns
    assert report["unknown_location_rows"] == []
    # proloc_ihs_test.csv: its locations column differs from the File Name on 42 rows
    assert len(report["name_vs_column_rows"]) == 42
    assert {r["file"] for r in report["name_vs_column_rows"]} == {str(ref_test)}
    within = {(r["protein_id"], r["antibody"]) for r in report["location_conflicts_within_antibody"]}
    assert len(within) == 7 and ("ENSG00000162599", "HPA006111") in within
    assert {r["protein_id"] for r in report["location_conflicts_across_antibodies"]} == {
        "ENSG00000154229", "ENSG00000162599"}
    assert report["duplicate_images"] == [] and report["shared_sequences"] == []
    assert report["cross_file"]["n_common_images"] == 566
    assert report["cross_file"]["location_mismatches"] == []

    assert proloc(["audit", str(ref_test), str(ref_url)]) == 0
    out = capsys.readouterr().out
    assert "Rows whose label columns disagree with their locations under the mapping: 0" in out
    assert "differs from the locations in their File Name" in out and ": 42" in out
    assert "ENSG00000154229: HPA006563 [cytosol;plasma membrane] x8" in out


def test_audit_finds_planted_problems(label_map):
    report = audit([FIXTURES / "audit_planted.csv"], label_map)
    [wrong] = report["disagreeing_rows"]
    assert (wrong["row"], wrong["protein_id"]) == (4, "ENSG00000000304")
    assert wrong["columns"] == {"cytoplasm": {"given": 1, "mapped": 0}}
    [within] = report["location_conflicts_within_antibody"]
    assert (within["protein_id"], within["antibody"]) == ("ENSG00000000301", "HPA000301")
    assert within["location_sets"] == {"nucleoplasm": {"n": 1, "organs": ["Brain"]},
                                       "cytosol;nucleoplasm": {"n": 1, "organs": ["Skin"]}}
    [across] = report["location_conflicts_across_antibodies"]
    assert across["protein_id"] == "ENSG00000000302"
    assert set(across["antibodies"]) == {"HPA000302", "HPA000303"}
    [dup] = report["duplicate_images"]
    assert (dup["image_name"], dup["n"], dup["rows"]) == ("6005_A_1_1.jpg", 2, [5, 6])
    assert dup["kind"] == "same protein+image"
    [shared] = report["shared_sequences"]
    assert shared["protein_ids"] == ["ENSG00000000305", "ENSG00000000306"]
    assert report["cross_file"] is None

    text = format_audit(report)
    for line in ("disagree with their locations under the mapping: 1",
                 "different location sets (images counted once): 1",
                 "antibodies carry different location sets: 1",
                 "Duplicate images within a file: 1", "Sequences shared by several proteins: 1",
                 "cytoplasm given 1 mapped 0"):
        assert line in text


def test_audit_reports_unknown_locations_and_same_name_other_protein(tmp_path, label_map, edit_csv):
    path = edit_csv(FIXTURES / "audit_planted.csv", tmp_path / "more.csv",
                 locations={0: "moon base"}, **{"Image Name": {7: "6001_A_2_1.jpg"}})
    report = audit([path], label_map)
    assert [r["row"] for r in report["unknown_location_rows"]] == [0]
    kinds = {d["image_name"]: d["kind"] for d in report["duplicate_images"]}
    assert kinds["6001_A_2_1.jpg"] == "same image name, different proteins"
    assert "moon base" in format_audit(report)


def test_audit_cross_file_join(tmp_path, label_map):
    # the same images in another order, one location changed: found by key, not by row
    df = pd.read_csv(FIXTURES / "audit_planted.csv", dtype=str, keep_default_na=False)
    other = df.iloc[::-1].copy()
    other.loc[other["Image Name"] == "6002_A_1_1.jpg", "locations"] = "nucleus"
    other.to_csv(tmp_path / "reordered.csv", index=False)
    report = audit([FIXTURES / "audit_planted.csv", tmp_path / "reordered.csv"], label_map)
    cf = report["cross_file"]
    assert cf["n_common_images"] == 7
    assert [(m["protein_id"], m["image_name"]) for m in cf["location_mismatches"]] == [
        ("ENSG00000000302", "6002_A_1_1.jpg")]


# -- a missing label column, another separator, a repeated header row ------------------------------
PLANTED = FIXTURES / "audit_planted.csv"


def _audit_line(capsys, path) -> tuple[int, str]:
    rc = proloc(["audit", str(path)])
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in cap.err and cap.out == "", cap.err
    return rc, lines[0]


@pytest.fixture
def authors_table(reference_dir) -> pd.DataFrame:
    return pd.read_csv(reference_dir / "proloc_ihs_test.csv", dtype=str, keep_default_na=False)


@pytest.mark.parametrize("dropped", ["nucleus", "plasma membrane"])
def test_a_table_without_a_label_column_is_an_error_naming_it(tmp_path, capsys, authors_table, label_map, dropped):
    path = tmp_path / "no_label.csv"
    authors_table.drop(columns=dropped).to_csv(path, index=False)
    rc, line = _audit_line(capsys, path)
    assert rc == 2 and line.startswith(f"proloc audit: {path}: no label column '{dropped}'"), line
    with pytest.raises(SchemaError, match=f"no label column '{dropped}'"):
        audit([path], label_map)


def test_the_full_table_still_passes_with_its_labels(tmp_path, authors_table, label_map):
    path = tmp_path / "all.csv"
    authors_table.to_csv(path, index=False)
    report = audit([path], label_map)
    assert report["files"][0]["label_columns_checked"] == label_map.labels
    assert report["files"][0]["labels"] is not None and report["files"][0]["rows"] == 566


@pytest.mark.parametrize("sep, name", [("\t", "tab"), (";", "semicolon")])
def test_another_separator_is_named(tmp_path, capsys, authors_table, sep, name):
    path = tmp_path / f"{name}.csv"
    authors_table.to_csv(path, index=False, sep=sep)
    rc, line = _audit_line(capsys, path)
    assert rc == 2 and f"{path}: looks {name}-separated (its header splits into 8 fields at {name}s, 1 at commas)" \
        in line and "save it with commas" in line, line


def test_one_row_with_another_separator_is_named_in_the_ragged_message(tmp_path):
    lines = PLANTED.read_text().splitlines()
    n = len(lines[0].split(","))
    lines[3] = "\t".join(f"v{i}" for i in range(n))
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TableError, match=f"line 4 has 1 fields, the header has {n} "
                                         r"\(that line looks tab-separated\)"):
        check_csv_file(path)


def test_a_repeated_header_row_is_named(tmp_path, capsys):
    lines = PLANTED.read_text().splitlines()
    path = tmp_path / "joined.csv"
    path.write_text("\n".join(lines + lines) + "\n")    # two files joined with their headers
    rc, line = _audit_line(capsys, path)
    assert rc == 2 and f"{path}: line {len(lines) + 1} repeats the header row" in line, line
