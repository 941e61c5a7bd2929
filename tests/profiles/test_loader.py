"""Profiles: the shipped ones load and inherit, bad ones fail clearly (the schema's per-key errors
are in test_schema.py)."""
import pytest

from proloc_lib.core import provenance, runtime
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
