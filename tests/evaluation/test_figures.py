"""The F1-against-threshold figure draws no curve for a label without positives."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from proloc_lib.evaluation import figures  # noqa: E402

LABELS = ["a", "er"]


def test_f1_vs_threshold_leaves_an_undefined_label_out_and_names_its_fallback():
    rng = np.random.default_rng(0)
    y = np.c_[(rng.random(30) < 0.5).astype(int), np.zeros(30, dtype=int)]
    p = rng.random((30, 2))
    df = pd.DataFrame({"id": range(30), "protein_id": range(30), "model": "fusion.corrected", "seed": 0,
                       "split": "val", "level": "protein"})
    for j, lab in enumerate(LABELS):
        df[f"y:{lab}"], df[f"p:{lab}"], df[f"t:{lab}"] = y[:, j], p[:, j], 0.5
    fig = figures.f1_vs_threshold(df, LABELS, "fusion.corrected")
    ax = fig.axes[0]
    curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
    assert [ln.get_label() for ln in curves] == ["a"]              # no ER curve (it used to sit at 1.0)
    assert all(np.nanmax(ln.get_ydata()) < 1.0 for ln in curves)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("er: undefined") and "fallback threshold 0.5" in t for t in legend)
    er_marks = [ln for ln in ax.get_lines() if ln.get_label().startswith("er")]
    assert len(er_marks) == 1 and list(er_marks[0].get_ydata()) == [0]
