"""The baselines stage driver (notebook 04) on a tiny stage (the `write_tiny_stage` fixture)."""
import numpy as np
import pandas as pd
import pytest

from proloc_lib.core import runs
from proloc_lib.data.labels import LABELS
from proloc_lib.stages import baselines, common

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_baselines_stage(tmp_path, write_tiny_stage, tiny_profile):
    root = tmp_path / "data"
    write_tiny_stage(root)
    cfg = tiny_profile()
    data = common.load_stage_data("tiny", data_root=root)
    res = baselines.run_baselines_stage(data, cfg["baselines"], seed=0)
    assert list(dict.fromkeys(res.metrics["model"])) == list(baselines.BASELINE_RUNS)
    assert (res.metrics["display"] == res.metrics["model"].map(runs.display_name)).all()
    pred = res.predictions[res.predictions["level"] == "protein"]

    def p(m, s):
        return baselines.protein_probs(pred, m, s, data.proteins.query("split == @s")["protein_id"], LABELS)
    np.testing.assert_allclose(p("baseline.late_fusion", "test"),
                               (p("baseline.sequence_mlp", "test") + p("baseline.image_mlp", "test")) / 2)
    # label frequency: the training prevalence for everyone
    train_prev = data.proteins.query("split == 'train'")[LABELS].mean().to_numpy()
    np.testing.assert_allclose(p("baseline.label_frequency", "test"), np.tile(train_prev, (15, 1)))
    # the image baseline reads the signal (label j <-> image token signal j)
    f1 = res.metrics.query("level == 'protein' and split == 'test' and label == 'overall' and metric == 'f1'"
                           ).set_index("model")["value"]
    assert f1["baseline.image_mlp"] > 0.8 and f1["baseline.image_mlp"] > f1["baseline.label_frequency"] + 0.2
    out = baselines.write_baseline_outputs(res, tmp_path / "04_baselines", cfg=cfg, data=data, params={})
    assert set(pd.read_csv(out / "metrics.csv")["model"]) == set(baselines.BASELINE_RUNS)
