"""`proloc audit` (and `proloc mirror`) on files it cannot read: one line naming the file, exit 2.

One case per kind of bad input: empty, binary, UTF-16, ragged, headerless, a
directory, a missing file, a missing or broken --mapping, an unknown layout, a bad label
column, bad arguments. Each must answer one line on stderr that names the file and the
problem, with no traceback and nothing on stdout; ``--debug`` re-raises for developers.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from proloc_lib.cli import data
from proloc_lib.cli.main import main as proloc
from proloc_lib.core.errors import UserError
from proloc_lib.core.paths import PROJECT_ROOT as ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "hpa"
GOOD = FIXTURES / "audit_planted.csv"
HEADER = GOOD.read_text().splitlines()[0]
ROW = GOOD.read_text().splitlines()[1]


def _audit(capsys, *args):
    rc = proloc(["audit", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line(err: str, *, command: str = "audit") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"proloc {command}: ")
    return lines[0]


def _write(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


CASES = {
    "empty": (b"", "file is empty"),
    "blank lines": (b"\n\n  \n", "file is empty"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary file"),
    "utf16": ((HEADER + "\n" + ROW + "\n").encode("utf-16"), "UTF-16"),
    "utf16 no bom": ((HEADER + "\n" + ROW + "\n").encode("utf-16-le"), "UTF-16"),
    "latin1": ((HEADER + "\n" + ROW.replace("WITHIN", "W\xc9THIN") + "\n").encode("latin-1"), "not UTF-8"),
    "ragged long": ((HEADER + "\n" + ROW + ",extra\n").encode(), "ragged table: line 2 has"),
    "ragged short": ((HEADER + "\n" + ROW.rsplit(",", 3)[0] + "\n").encode(), "ragged table: line 2 has"),
    "headerless": ((ROW + "\n" + ROW + "\n").encode(), "unknown layout"),
    "unknown layout": (b"gene,image\nx,y\n", "unknown layout"),
    "bad label column": ((HEADER + "\n" + ROW.replace(",0,0,0,0,0,0,0,1,0,0,", ",0,0,0,0,0,0,0,yes,0,0,", 1)
                          + "\n").encode(), "label column 'nucleus' holds 'yes'"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_file_one_line(kind, tmp_path, capsys):
    data, problem = CASES[kind]
    path = _write(tmp_path, f"{kind.replace(' ', '_')}.csv", data)
    rc, out, err = _audit(capsys, path)
    line = _one_line(err)
    assert rc == 2 and out == ""
    assert str(path) in line and problem in line, line


def test_cli_requires_existing_files(tmp_path, capsys):
    assert proloc(["audit", str(tmp_path / "absent.csv")]) == 2
    assert "absent.csv: file not found" in capsys.readouterr().err
    assert data.DEFAULT_MAPPING.exists()


def test_directory_and_missing_file(tmp_path, capsys):
    rc, out, err = _audit(capsys, tmp_path)
    assert rc == 2 and f"{tmp_path}: is a directory" in _one_line(err)
    rc, out, err = _audit(capsys, GOOD, tmp_path / "absent.csv")
    assert rc == 2 and out == "" and f"{tmp_path / 'absent.csv'}: file not found" in _one_line(err)


def test_bad_mapping(tmp_path, capsys):
    rc, _, err = proloc(["audit", str(GOOD), "--mapping", str(tmp_path / "none.yaml")]), None, None
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path / 'none.yaml'}: label mapping not found" in _one_line(err)
    broken = _write(tmp_path, "broken.yaml", b"name: x\nversion: 1\nlabels: [a]\nmap: {b: [zzz]}\n")
    assert proloc(["audit", str(GOOD), "--mapping", str(broken)]) == 2
    assert f"{broken}: not a valid label mapping" in _one_line(capsys.readouterr().err)
    garbage = _write(tmp_path, "garbage.yaml", b"\x00\x01: [")
    assert proloc(["audit", str(GOOD), "--mapping", str(garbage)]) == 2
    assert f"{garbage}: not a valid label mapping" in _one_line(capsys.readouterr().err)


def test_bad_arguments(capsys):
    assert proloc(["audit"]) == 2
    assert "required: csv" in _one_line(capsys.readouterr().err)
    assert proloc(["audit", str(GOOD), "--max-examples", "many"]) == 2
    assert "many" in _one_line(capsys.readouterr().err)


def test_debug_shows_the_traceback(tmp_path):
    empty = _write(tmp_path, "empty.csv", b"")
    with pytest.raises(UserError, match="file is empty"):
        proloc(["audit", str(empty), "--debug"])


def test_command_line_process_exit_code(tmp_path):
    """The real process: exit code 2, one stderr line, no traceback."""
    empty = _write(tmp_path, "empty.csv", b"")
    r = subprocess.run([sys.executable, "-m", "proloc_lib", "audit", str(empty)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"proloc audit: {empty}: file is empty"


def test_audit_json_on_the_real_tables(capsys, vislocas_dir):
    """The documented --json keys, with the counts of the real Vislocas tables."""
    rc, out, err = _audit(capsys, vislocas_dir / "data_train.csv", vislocas_dir / "data_test.csv", "--json")
    assert rc == 0 and err == ""
    rep = json.loads(out)
    train, test = rep["files"]
    for f, (rows, images, proteins, abs_) in zip((train, test), ((5440, 5169, 494, 612), (589, 566, 54, 68))):
        assert f["layout"] == "vislocas"
        assert (f["rows"], f["unique_images"], f["proteins"], f["antibodies"]) == (rows, images, proteins, abs_)
        assert f["duplicate_image_rows"] == rows - images
        assert set(f["labels"]) == {"cytoplasm", "endoplasmic reticulum", "mitochondria", "nucleus",
                                    "plasma membrane"}
        assert all(set(v) == {"images", "proteins"} for v in f["labels"].values())
        assert isinstance(f["proteins_with_mixed_label_sets"], int)
    # the v2 mapping against the tables' own columns (the issue's measurement)
    assert train["label_disagreements"] == 306 and test["label_disagreements"] == 0
    assert rep["label_disagreements"] == 306
    assert (rep["unique_images"], rep["proteins"]) == (5169 + 566, 494 + 54)
    assert rep["label_source"] == "columns"
    # per-label counts over unique images add up to the image label columns
    assert sum(v["images"] for v in rep["labels"].values()) >= rep["unique_images"] - 200


@pytest.mark.parametrize("column,value,problem", [
    ("Sequence", "MK7T", "row 0"),                    # not an amino-acid sequence
    ("Antibody Id", "", "empty antibody"),
])
def test_bad_row_one_line(tmp_path, capsys, column, value, problem):
    import pandas as pd

    df = pd.read_csv(GOOD, dtype=str, keep_default_na=False)
    df.loc[0, column] = value
    path = tmp_path / "badrow.csv"
    df.to_csv(path, index=False)
    rc, out, err = _audit(capsys, path)
    line = _one_line(err)
    assert rc == 2 and out == "" and str(path) in line and problem in line, line


def test_mirror_without_tables_is_one_line(tmp_path, capsys):
    assert proloc(["mirror", "--vislocas", str(tmp_path), "--seconds", "1"]) == 2
    line = _one_line(capsys.readouterr().err, command="mirror")
    assert f"{tmp_path / 'data_train.csv'}: Vislocas table not found" in line
