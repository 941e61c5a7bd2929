"""`proloc audit` on tables it used to pass or misname: a table without a label column, a tab- or
semicolon-separated table, a repeated header row. One line naming the file and the problem, exit 2."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from proloc_lib.cli.main import main as proloc
from proloc_lib.data.audit import audit
from proloc_lib.data.hpa import SchemaError, TableError, check_csv_file
from proloc_lib.data.labels import LabelMap

ROOT = Path(__file__).resolve().parents[2]
PLANTED = ROOT / "tests" / "fixtures" / "hpa" / "audit_planted.csv"
MAPPING = ROOT / "data" / "mappings" / "hpa_to_proloc5.yaml"


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
def test_a_table_without_a_label_column_is_an_error_naming_it(tmp_path, capsys, authors_table, dropped):
    path = tmp_path / "no_label.csv"
    authors_table.drop(columns=dropped).to_csv(path, index=False)
    rc, line = _audit_line(capsys, path)
    assert rc == 2 and line.startswith(f"proloc audit: {path}: no label column '{dropped}'"), line
    with pytest.raises(SchemaError, match=f"no label column '{dropped}'"):
        audit([path], LabelMap.load(MAPPING))


def test_the_full_table_still_passes_with_its_labels(tmp_path, capsys, authors_table):
    path = tmp_path / "all.csv"
    authors_table.to_csv(path, index=False)
    report = audit([path], LabelMap.load(MAPPING))
    assert report["files"][0]["label_columns_checked"] == LabelMap.load(MAPPING).labels
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
