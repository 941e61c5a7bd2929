"""Figures and table files: every table file carries its provenance, a finished figure saves without a
second layout pass; the F1-against-threshold figure draws no curve for a label without positives."""
import colorsys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from proloc_lib.core import provenance
from proloc_lib.evaluation import figures, scoring

LABELS = ["a", "b", "c"]  # the three labels of the toy_scores fixture


def test_every_table_file_carries_its_provenance(tmp_path, toy_scores):
    note = provenance.provenance_note({"synthetic_images": True, "random_weight_encoders": True,
                                       "real_sequences": True})
    table = pd.DataFrame({"F1_paper": [0.7, np.nan], "F1": ["0.61 ± 0.02", "undefined"]},
                         index=pd.Index(["fusion (corrected)", "label frequency"], name="model"))
    paths = figures.save_table(table, tmp_path, "main_table", f"Profile 'demo'. {note}", note="50 resamples (demo).")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    csv = pd.read_csv(tmp_path / "main_table.csv")
    assert list(csv.columns) == ["model", "F1_paper", "F1", "provenance"]
    assert csv["provenance"].str.contains("SYNTHETIC").all() and csv["provenance"].str.contains("RANDOM-WEIGHT").all()
    md = (tmp_path / "main_table.md").read_text()
    assert md.splitlines()[0].startswith("Profile 'demo'. Demo numbers: SYNTHETIC") and "50 resamples" in md
    tex = (tmp_path / "main_table.tex").read_text()
    assert tex.startswith("% Profile 'demo'. Demo numbers: SYNTHETIC") and "\\caption{" in tex
    assert "F1\\_paper" in tex and "undefined" in tex          # escaped for LaTeX; NaN shown as undefined
    y, p = toy_scores(n=20)
    tidy = scoring.tidy("fusion.corrected", "protein", "test", 0, y, p, LABELS, provenance=note)
    assert (tidy["provenance"] == note).all()


def test_finished_figure_saves_without_a_layout_pass(tmp_path):
    """finish lays the figure out once and leaves no layout engine, so savefig draws it once
    (an engine, even tight_layout's placeholder, costs a second full draw per file) and the
    saved PNG is the same."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    def make():
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([0, 1, 2], [1, 0, 2], label="a run")
        ax.set_title("title")
        ax.legend()
        return fig

    plain = make()
    plain.text(0.01, 0.005, "caption", fontsize=7, ha="left", va="bottom", wrap=True, color="dimgray")
    plain.tight_layout(rect=(0, 0.06, 1, 1))       # what finish did before: leaves a placeholder engine
    assert plain.get_layout_engine() is not None
    plain.savefig(tmp_path / "plain.png", dpi=150)   # as figures.save
    fig = figures.finish(make(), "caption")
    assert fig.get_layout_engine() is None
    figures.save(fig, tmp_path, "finished", "caption", formats=("png",))
    assert (tmp_path / "finished.png").read_bytes() == (tmp_path / "plain.png").read_bytes()
    plt.close("all")


A_ER = ["a", "er"]


def test_f1_vs_threshold_leaves_an_undefined_label_out_and_names_its_fallback():
    rng = np.random.default_rng(0)
    y = np.c_[(rng.random(30) < 0.5).astype(int), np.zeros(30, dtype=int)]
    p = rng.random((30, 2))
    df = pd.DataFrame({"id": range(30), "protein_id": range(30), "model": "fusion.corrected", "seed": 0,
                       "split": "val", "level": "protein"})
    for j, lab in enumerate(A_ER):
        df[f"y:{lab}"], df[f"p:{lab}"], df[f"t:{lab}"] = y[:, j], p[:, j], 0.5
    fig = figures.f1_vs_threshold(df, A_ER, "fusion.corrected")
    ax = fig.axes[0]
    curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
    assert [ln.get_label() for ln in curves] == ["a"]              # no ER curve (it used to sit at 1.0)
    assert all(np.nanmax(ln.get_ydata()) < 1.0 for ln in curves)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("er: undefined") and "fallback threshold 0.5" in t for t in legend)
    er_marks = [ln for ln in ax.get_lines() if ln.get_label().startswith("er")]
    assert len(er_marks) == 1 and list(er_marks[0].get_ydata()) == [0]


TWO_LABELS = ["cytoplasm", "nucleus"]
MODELS = ["fusion.corrected", "fusion.authors", "baseline.label_frequency", "baseline.composition_lr",
          "control.permuted_labels"]


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*rgb[:3])[0] * 360


def test_families_get_their_own_palette_and_shades_within_it():
    colors = figures.family_colors(MODELS)
    assert len({tuple(c) for c in colors.values()}) == len(MODELS)            # every model its own shade
    for m in ("fusion.corrected", "fusion.authors"):
        assert 180 < _hue(colors[m]) < 260                                     # blue
    for m in ("baseline.label_frequency", "baseline.composition_lr"):
        assert 10 < _hue(colors[m]) < 50                                       # orange
    r, g, b = colors["control.permuted_labels"][:3]
    assert max(r, g, b) - min(r, g, b) < 0.02                                  # grey


def _results():
    rows = []
    for k, m in enumerate(MODELS):
        for seed in (0, 1, 2):
            for metric in ("f1", "macro_f1"):
                rows.append({"model": m, "level": "protein", "split": "test", "label": "overall", "metric": metric,
                             "seed": seed, "value": 0.1 * (k + 1) + 0.01 * seed})
    return pd.DataFrame(rows)


def test_main_metric_bars_are_seed_means_with_a_dot_per_seed():
    fig = figures.metric_bars_by_family(_results(), MODELS, ["f1", "macro_f1"])
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    expected = sorted(round(0.1 * (k + 1) + 0.01, 6) for k in range(len(MODELS)) for _ in range(2))
    assert heights == expected                                                  # mean of 0, .01, .02 offsets
    dots = sum(len(c.get_offsets()) for c in ax.collections)
    assert dots == len(MODELS) * 2 * 3                                          # one dot per seed and metric
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "FUSION MODEL" and "BASELINES" in legend and legend[-2] == "CONTROLS"
    assert len(ax.get_xticks()) == 2                                            # one group per metric
    plt.close(fig)


def test_training_curve_ticks_are_whole_epochs():
    hist = pd.DataFrame({"model": "fusion.corrected", "seed": 0, "epoch": [1, 2, 3],
                         "train_loss": [0.9, 0.6, 0.5], "val_loss": [1.0, 0.8, 0.85], "best": [0, 1, 0]})
    fig = figures.training_curves(hist)
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)


def _pred():
    # 6 test proteins; thresholds 0.5 (cytoplasm) and 0.3 (nucleus)
    y_c, p_c = [1, 1, 0, 0, 1, 0], [0.9, 0.4, 0.6, 0.1, 0.7, 0.2]
    y_n, p_n = [0, 1, 1, 0, 0, 0], [0.35, 0.8, 0.2, 0.1, 0.05, 0.29]
    return pd.DataFrame({"model": "fusion.corrected", "level": "protein", "split": "test", "seed": 0,
                         "protein_id": [f"P{i}" for i in range(6)], "y:cytoplasm": y_c, "p:cytoplasm": p_c,
                         "t:cytoplasm": 0.5, "y:nucleus": y_n, "p:nucleus": p_n, "t:nucleus": 0.3})


def test_confusion_counts_at_the_chosen_thresholds():
    counts = figures.confusion_counts(_pred(), TWO_LABELS, "fusion.corrected")
    assert counts.loc["cytoplasm", ["TP", "FN", "FP", "TN"]].tolist() == [2, 1, 1, 2]
    assert counts.loc["nucleus", ["TP", "FN", "FP", "TN"]].tolist() == [1, 1, 1, 3]
    assert counts.loc["nucleus", "threshold"] == 0.3
    fig = figures.confusion_grid(counts, "fusion.corrected")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(texts) == ["1", "1", "2", "2"]
    plt.close(fig)


def test_roc_legend_gives_each_models_auc():
    from sklearn.metrics import roc_auc_score

    pred = _pred()
    fig = figures.roc_curves(pred, TWO_LABELS, ["fusion.corrected"])
    aucs = [t.get_text() for a in fig.axes for leg in a.artists if hasattr(leg, "get_texts") for t in leg.get_texts()]
    assert aucs[0] == f"AUC {roc_auc_score(pred['y:cytoplasm'], pred['p:cytoplasm']):.2f}"
    assert aucs[1] == f"AUC {roc_auc_score(pred['y:nucleus'], pred['p:nucleus']):.2f}"
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["fusion (corrected)"]
    plt.close(fig)


def test_label_counts_per_split():
    proteins = pd.DataFrame({"protein_id": ["A", "B", "C", "D"], "split": ["train", "train", "val", "test"],
                             "cytoplasm": [1, 1, 0, 1], "nucleus": [0, 1, 1, 1]})
    images = pd.DataFrame({"protein_id": ["A", "A", "B", "C", "D", "D", "D"]})
    fig = figures.label_counts(proteins, images, TWO_LABELS)
    protein_bars = sorted(p.get_height() for p in fig.axes[0].patches)
    image_bars = sorted(p.get_height() for p in fig.axes[1].patches)
    # proteins: train (2, 1), val (0, 1), test (1, 1); images: train (3, 1), val (0, 1), test (3, 3)
    assert protein_bars == sorted([2, 1, 0, 1, 1, 1]) and image_bars == sorted([3, 1, 0, 1, 3, 3])
    plt.close(fig)


@pytest.mark.parametrize("truth, calls, title, marks", [
    ({"cytoplasm": 1, "nucleus": 0}, {"cytoplasm": True, "nucleus": False}, "all right", ["✓ cytoplasm"]),
    ({"cytoplasm": 1, "nucleus": 0}, {"cytoplasm": False, "nucleus": True}, "errors",
     ["✗ missed: cytoplasm", "✗ wrong: nucleus"]),
])
def test_gallery_marks_each_label_right_missed_or_wrong(truth, calls, title, marks):
    ex = {"protein_id": "P1", "model": "fusion (corrected)", "image": Image.new("RGB", (32, 32)),
          "truth": truth, "calls": calls}
    fig = figures.prediction_gallery([ex], TWO_LABELS, synthetic=True)
    ax, text_ax = fig.axes[:2]
    assert title in ax.get_title() and [t.get_text() for t in text_ax.texts] == marks
    assert fig._suptitle.get_text().startswith("SYNTHETIC images.")
    plt.close(fig)
