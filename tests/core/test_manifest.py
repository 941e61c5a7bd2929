"""Profiles and stage manifests: strict configs, atomic stage outputs, checksummed inputs."""
import json

import pytest

from proloc_lib.core import manifest, provenance, runtime
from proloc_lib.core.fileio import file_sha256
from proloc_lib.profiles import loader as profiles


def test_profiles_load_and_inherit():
    demo, smoke, full = (profiles.load_profile(p) for p in ("demo", "smoke", "full"))
    assert demo["offline"] and not full["offline"]
    assert smoke["data"]["n_proteins"] < demo["data"]["n_proteins"]
    assert smoke["embeddings"] == demo["embeddings"]          # inherited, same code path
    assert demo["provenance"]["synthetic_images"] and not full["provenance"]["synthetic_images"]
    assert "SYNTHETIC" in provenance.provenance_note(demo) and "Real data" in provenance.provenance_note(full)


def test_bad_profiles_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="known profiles"):
        profiles.load_profile("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: demo\ntrainig: {}\n")
    with pytest.raises(ValueError, match="trainig"):
        profiles.load_profile(str(bad))
    with pytest.raises(ValueError, match="unknown device"):
        runtime.resolve_device("tpu")
    assert runtime.resolve_device("cpu") == "cpu"


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
