"""Stage manifests: atomic stage outputs, checksummed inputs, a clear error for a missing or corrupt one."""
import json

import pytest

from proloc_lib.core import manifest
from proloc_lib.core.errors import UserError
from proloc_lib.core.fileio import file_sha256


def test_stage_output_is_atomic_and_records_inputs(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    out = tmp_path / "data" / "demo" / "01_data_assembly"
    with manifest.stage_output(out, "01_data_assembly", {"seed": 1}, [src], {"synthetic_images": True}) as (tmp, extra):
        (tmp / "table.csv").write_text("a\n1\n")
        extra["n"] = 1
    man = manifest.read_manifest(out)
    assert man["inputs"][str(src)] == file_sha256(src)
    assert man["outputs"] == {"table.csv": file_sha256(out / "table.csv")}
    assert man["parameters"] == {"seed": 1} and man["n"] == 1 and man["packages"]["numpy"]
    # a failing rerun leaves the previous complete output untouched, and no partial folder
    with pytest.raises(RuntimeError):
        with manifest.stage_output(out, "01_data_assembly", {"seed": 2}) as (tmp, extra):
            (tmp / "table.csv").write_text("half")
            raise RuntimeError("interrupted")
    assert (out / "table.csv").read_text() == "a\n1\n"
    assert json.loads((out / "manifest.json").read_text())["parameters"] == {"seed": 1}
    assert not out.with_name(out.name + ".partial").exists()


def test_missing_stage_names_the_notebook_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the earlier notebooks"):
        manifest.read_manifest(tmp_path / "02_embeddings")


def test_corrupt_manifest_is_named(tmp_path):
    from proloc_lib.core.manifest import ManifestError, read_manifest

    (tmp_path / "manifest.json").write_text('{"stage": ')
    with pytest.raises(ManifestError, match=r"manifest.json is not a valid manifest.*rerun the stage"):
        read_manifest(tmp_path)
    assert issubclass(ManifestError, UserError)
