"""Figures and table files: every table file carries its provenance, a finished figure saves without a
second layout pass; the F1-against-threshold figure draws no curve for a label without positives."""
import numpy as np
import pandas as pd

from proloc_lib.core import provenance
from proloc_lib.evaluation import figures, scoring

LABELS = ["a", "b", "c"]  # the three labels of the toy_scores fixture


def test_every_table_file_carries_its_provenance(tmp_path, toy_scores):
    note = provenance.provenance_note({"synthetic_images": True, "random_weight_encoders": True, "real_sequences": True})
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
