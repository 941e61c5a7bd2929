"""The embeddings stage (notebook 02) writes its manifest only for complete, verified stores; it runs
on the `stage01` fixture (a tiny stage 01 on the smoke profile)."""
import json

import pytest
from PIL import Image

from proloc_lib.core.paths import PROJECT_ROOT as ROOT


def run_nb02(data_root, out):
    import papermill as pm

    return pm.execute_notebook(str(ROOT / "notebooks" / "02_embeddings.ipynb"), str(out),
                               parameters={"profile": "smoke", "seed": 0, "device": "cpu",
                                           "data_root": str(data_root)},
                               cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")


@pytest.mark.slow  # two notebook runs
def test_notebook_02_refuses_a_manifest_for_an_incomplete_store(stage01, tmp_path):
    import papermill as pm

    broken = stage01 / "smoke" / "images" / "im1.jpg"
    good = broken.read_bytes()
    broken.write_text("<html>404</html>")
    manifest = stage01 / "smoke" / "02_embeddings" / "manifest.json"
    with pytest.raises(pm.PapermillExecutionError) as info:
        run_nb02(stage01, tmp_path / "nb1.ipynb")
    msg = str(info.value)
    assert "IncompleteStoreError" in msg and "1 of 4 items missing" in msg and "no manifest was written" in msg
    assert not manifest.exists()
    broken.write_bytes(good)                  # fixed: the rerun embeds only that image and writes the manifest
    run_nb02(stage01, tmp_path / "nb2.ipynb")
    man = json.loads(manifest.read_text())
    assert man["image_report"]["embedded"] == 1 and man["sequence_report"]["embedded"] == 0
    assert Image.open(broken).size == (72, 64)
