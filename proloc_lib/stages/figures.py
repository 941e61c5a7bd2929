"""Notebook 05's driver: the main table, the statistics a reviewer needs and the figures.

It gathers the tidy results and predictions of stages 03 (fusion model, ablations, controls) and
04 (baselines); models are selected by run id and shown by display name. Everything is kept in
``Outputs`` until ``write`` puts it into ``figures/<profile>/`` in one step (a failed run leaves
the last complete folder as it was); the tidy table of all metrics goes to ``05_figures/``.

``figures/<profile>/summary.json`` holds the numbers a README quotes (the main comparison, the
permutation control's bound, the composition-vs-frequency difference, calibration floors, the
main table's cells) with the provenance line; ``readme_mismatches`` checks a README's tagged
quotes against it (``proloc check-readme``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from proloc_lib.core import manifest, paths, runs
from proloc_lib.core.errors import UserError
from proloc_lib.data.images import load_image
from proloc_lib.evaluation import figures, scoring, statistics, tables
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.stages.common import STAGE_TABLES, STORE_FILES, Stage, stage_note
from proloc_lib.training.checkpoint import Checkpoint, trained_end_token

CORRECTED, AUTHORS = runs.FUSION_CORRECTED, runs.FUSION_AUTHORS
COMPOSITION, FREQUENCY = "baseline.composition_lr", "baseline.label_frequency"
FULL_BOOTSTRAP = 2000   # the full profile's resamples; fewer are said in every table
SUMMARY = "summary.json"
NBSP, NBHYPHEN = "\u00a0", "\u2011"


def interval_cell(value: float, low: float, high: float, n: int) -> str:
    """'0.812 [0.701, 0.905]'; 'undefined (no positive)'; an interval over too few proteins is
    not shown as if it meant something: '1.000 (n=1: too few proteins for an interval)'."""
    if pd.isna(value):
        return "undefined (no positive)"
    few = statistics.too_few_for_interval(int(n))
    return f"{value:.3f} ({few})" if few else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def mark_uninformative(table: pd.DataFrame, *, n_col: str = "n_proteins",
                       cols=("ci_low", "ci_high", "p_value", "p_holm")) -> pd.DataFrame:
    """Rows over too few proteins: their interval (and bootstrap p-value) columns say so instead of
    giving numbers."""
    if table.empty or n_col not in table:
        return table
    cols = [c for c in cols if c in table]
    notes = table[n_col].map(lambda n: statistics.too_few_for_interval(int(n)))
    out = table.astype({c: object for c in cols})
    for c in cols:
        out.loc[notes.notna(), c] = notes[notes.notna()]
    return out


class FiguresStage(Stage):
    """Notebook 05, one method per section; each returns the table it shows (figures are shown as
    they are made)."""
    name = "05_figures"

    reads = {"01_data_assembly": STAGE_TABLES, "02_embeddings": STORE_FILES,
             "03_training": ("metrics.csv", "history.csv", "predictions.parquet", "checkpoint-corrected/*"),
             "04_baselines": ("metrics.csv", "predictions.parquet")}

    def __init__(self, profile, *, seed: int = 0, device: str = "auto", data_root=None, figures_root=None):
        self.figures_root = figures_root
        super().__init__(profile, seed=seed, device=device, data_root=data_root)

    @classmethod
    def extra_outputs(cls, cfg, *, seed: int, data_root=None, figures_root=None) -> list[Path]:
        return [paths.figures_dir(cfg.name, figures_root, seed=seed, data_root=data_root)]

    @classmethod
    def parameters_for(cls, cfg, *, seed: int, device: str, data_root=None, figures_root=None) -> dict:
        return {"profile": cfg.name, "seed": seed,
                "bootstrap_resamples": int(cfg["figures"].get("bootstrap_resamples", FULL_BOOTSTRAP)),
                "permutation_resamples": int(cfg["figures"].get("permutation_resamples", 1000)),
                "formats": cfg["figures"]["formats"]}   # where the figures go is checked by stage_status, not here

    def options(self) -> dict:
        return {"figures_root": self.figures_root}

    def open(self) -> None:
        self.data_dir = self.stage_dir("01_data_assembly")
        self.train_dir, self.base_dir = self.stage_dir("03_training"), self.stage_dir("04_baselines")
        self.fig_dir = self.extra_outputs(self.cfg, seed=self.seed, data_root=self.data_root,
                                          figures_root=self.figures_root)[0]
        self.fig_lock = self.hold(self.fig_dir)   # the figures folder is this stage's output too
        manifest.recover(self.fig_dir)
        self.labels = manifest.read_manifest(self.data_dir)["labels"]
        self.proteins = pd.read_parquet(self.data_dir / "proteins.parquet")
        self.results_in = pd.concat([pd.read_csv(self.base_dir / "metrics.csv"),
                                     pd.read_csv(self.train_dir / "metrics.csv")], ignore_index=True)
        pred_in = pd.concat([pd.read_parquet(self.base_dir / "predictions.parquet"),
                             pd.read_parquet(self.train_dir / "predictions.parquet")], ignore_index=True)
        history = pd.read_csv(self.train_dir / "history.csv")
        # the `model` column is the run id; as_run_id also reads stage outputs written before run ids existed
        self.results = self.results_in.assign(model=self.results_in["model"].map(tables.as_run_id))
        self.pred = pred_in.assign(model=pred_in["model"].map(tables.as_run_id))
        self.history = history.assign(model=history["model"].map(tables.as_run_id)) if "model" in history else history
        ids = list(dict.fromkeys(self.results["model"]))
        self.table_models = [m for m in ids if runs.kind(m) != "ablation"]
        # the same split: pairs, curves, intervals
        self.main_models = [m for m in self.table_models if runs.kind(m) not in ("cv", "resplit")]
        self.n_boot = int(self.cfg["figures"].get("bootstrap_resamples", FULL_BOOTSTRAP))
        self.n_perm = int(self.cfg["figures"].get("permutation_resamples", 1000))
        self.boot_note = (f"Intervals: 95%, {self.n_boot} bootstrap resamples over test proteins"
                          + (f" (fewer than the full profile's {FULL_BOOTSTRAP}, to keep the demo within its time "
                             "budget)." if self.n_boot < FULL_BOOTSTRAP else "."))
        self.caption = f"Profile '{self.profile}'. {stage_note(self.cfg, self.data_root, seed=self.seed)}"  # stage 01's
        self.out = figures.Outputs(self.caption)
        self.summary: dict = {"profile": self.profile, "provenance": self.caption}
        figures.set_style()

    def header(self) -> pd.DataFrame:
        """The runs in these results and how the tables name them."""
        return pd.DataFrame({"run id": self.table_models, "shown as": runs.display_names(self.table_models)})

    def main_table(self) -> pd.DataFrame:
        """Image level with the paper's formulas next to protein level with the standard metrics."""
        return self.out.table("main_table", tables.main_table(self.results, models=self.table_models),
                              note="Image level: paper's formulas (F1_paper = 2PR/(P+R) of averaged P, R). "
                                   "Protein level: standard example-based metrics. Mean ± sd over seeds.")

    def main_table_views(self) -> tuple:
        """The main table as narrower tables whose cells do not wrap, for reading in a notebook window
        (main_table.csv keeps every column in one table): each image level (against the image
        table's labels, and against the authors' where scored) with the paper's example-based
        formulas and, apart, micro-averaged over labels (the primed metrics); protein level with the
        standard metrics; what each model trained on."""
        main = tables.main_table(self.results, models=self.table_models)
        titles = list(dict.fromkeys(c.split(" · ", 1)[0] for c in main.columns if " · " in c))
        named = {"image": "Image level", "image, authors' labels": "Image level against the authors' labels",
                 "protein": "Protein level"}
        pieces = []
        for title in titles:
            cols = [c for c in main.columns if c.startswith(f"{title} · ")]
            label = named.get(title, title)
            if title.startswith("image"):
                n = [c for c in cols if c.endswith(" · n")]
                pieces.append((f"{label}, the paper's formulas", [c for c in cols if not c.endswith("'")], True))
                pieces.append((f"{label}, micro-averaged over labels", n + [c for c in cols if c.endswith("'")], True))
            else:
                pieces.append((f"{label}, the standard metrics", cols, False))
        if "trained on" in main.columns:
            pieces.append(("What each model trained on", ["trained on"], False))
        views = []
        for k, (title, cols, image_level) in enumerate(pieces):
            part = main[cols].rename(columns=lambda c: c.split(" · ", 1)[-1])
            if image_level:     # models scored only per protein have no image-level row
                part = part[~(part.drop(columns="n", errors="ignore") == "—").all(axis=1)]
            if part.empty or len(part.columns) < 1:
                continue
            # non-breaking spaces and hyphens: "0.856 ± 0.005" stays on one line even where a viewer
            # drops the style block (JupyterLab does for notebooks it does not trust)
            part = part.map(lambda v: str(v).replace(" ", NBSP))
            part.index = [str(m).replace(" ", NBSP).replace("-", NBHYPHEN) for m in part.index]
            part.columns = [str(c).replace(" ", NBSP) for c in part.columns]
            views.append(part.style.set_uuid(f"main_{k}")
                         .set_caption(f"{title} (test, mean ± sd over seeds). {self.caption}")
                         .set_table_styles([{"selector": "td, th", "props": "white-space: nowrap; padding: 2px 8px;"},
                                            {"selector": "caption", "props": "caption-side: top; text-align: left; "
                                                                             "font-weight: bold;"}]))
        return tuple(views)

    def label_counts(self) -> None:
        """Proteins and images per label in each split."""
        images = pd.read_parquet(self.data_dir / "images.parquet")
        self.out.figure("label_counts", figures.label_counts(self.proteins, images, self.labels))

    def confusion(self) -> pd.DataFrame:
        """Per label: the corrected model's calls at its chosen thresholds against the truth (counts),
        and the ROC curves of the main models."""
        counts = figures.confusion_counts(self.pred, self.labels, CORRECTED)
        self.out.figure("confusion", figures.confusion_grid(counts, CORRECTED))
        compared = [m for m in self.main_models if runs.kind(m) in ("fusion", "control")]   # the study's own models
        self.out.figure("roc_curves", figures.roc_curves(self.pred, self.labels, compared or self.main_models))
        return self.out.table("confusion_counts", counts.round(3),
                              note=f"{runs.display_name(CORRECTED)}, first seed, test proteins; call: p >= the "
                                   "label's threshold chosen on validation.")

    def prediction_gallery(self, n: int = 6) -> None:
        """A few test proteins, one image each, with their true labels and the corrected model's
        calls (first seed): up to half of them proteins with an error, the rest all right."""
        test = self._test_proteins()
        s = test[test["model"] == CORRECTED]
        s = s[s["seed"] == s["seed"].min()].sort_values("protein_id")
        calls = {lab: s[f"p:{lab}"] >= s[f"t:{lab}"] for lab in self.labels}
        wrong = pd.concat([calls[lab] != s[f"y:{lab}"].astype(bool) for lab in self.labels], axis=1).any(axis=1)
        picked = pd.concat([s[wrong].head(n // 2), s[~wrong]]).head(n).sort_values("protein_id")
        images = pd.read_parquet(self.data_dir / "images.parquet")
        first_image = images[images["split"] == "test"].groupby("protein_id")["path"].first()
        examples = [{"protein_id": r["protein_id"], "model": runs.display_name(CORRECTED),
                     "image": load_image(self.profile_dir / first_image[r["protein_id"]]),
                     "truth": {lab: r[f"y:{lab}"] for lab in self.labels},
                     "calls": {lab: r[f"p:{lab}"] >= r[f"t:{lab}"] for lab in self.labels}}
                    for _, r in picked.iterrows() if r["protein_id"] in first_image.index]
        if examples:
            self.out.figure("prediction_gallery", figures.prediction_gallery(
                examples, self.labels, synthetic=bool(self.cfg["provenance"].get("synthetic_images"))))

    def metrics_by_level(self) -> pd.DataFrame:
        """The main metrics as bars, and every metric per level (mean ± sd over seeds)."""
        main = self.results[self.results["model"].isin(self.main_models)]
        self.out.figure("main_metrics", figures.metric_bars_by_family(
            scoring.primary_truth(main), self.main_models,
            ["absolute_true", "accuracy", "f1", "f1_paper", "micro_f1", "macro_f1"]))
        levels = [lvl for lvl in ("image", "protein") if (self.results["level"] == lvl).any()]
        shown = self.results[self.results["model"].isin(self.table_models)]
        return pd.concat({lvl: self.out.table(
            f"metrics_{lvl}", tables.summary_table(shown, level=lvl),
            note=f"{lvl} level, test split; standard metrics and the paper's formulas (_paper), mean ± sd over seeds.")
            for lvl in levels})

    def _test_proteins(self) -> pd.DataFrame:
        return self.pred[(self.pred["level"] == "protein") & (self.pred["split"] == "test")]

    def paired_comparisons(self) -> pd.DataFrame:
        """Corrected against every other model, and composition + LR against label frequency:
        paired bootstrap over test proteins (first seed of each), Holm-adjusted over the table."""
        test = self._test_proteins()

        def first(m):
            sel = test[test["model"] == m]
            return sel[sel["seed"] == sel["seed"].min()]

        pairs = [(CORRECTED, m) for m in self.main_models if m != CORRECTED]
        if {COMPOSITION, FREQUENCY} <= set(self.main_models):
            pairs.append((COMPOSITION, FREQUENCY))
        pairs = [(a, b) for a, b in pairs if not first(a).empty and not first(b).empty]
        rows = [{"model A": runs.display_name(a), "model B": runs.display_name(b),
                 **statistics.bootstrap_f1_difference(first(a), first(b), self.labels, n_boot=self.n_boot,
                                                      seed=self.seed)} for a, b in pairs]
        comparisons = pd.DataFrame(rows)
        if len(comparisons):
            comparisons.insert(comparisons.columns.get_loc("p_value") + 1, "p_holm",
                               statistics.holm(comparisons["p_value"]))
            for (a, b), row in zip(pairs, comparisons.to_dict("records")):
                if (a, b) == (COMPOSITION, FREQUENCY):
                    self.summary["composition_vs_frequency"] = _plain(row)
        return self.out.table("paired_comparisons", mark_uninformative(comparisons.round(4)), index=False,
                              note=f"Paired per-protein bootstrap of the sample-F1 difference A - B (first seed of "
                                   f"each model). p_value: two-sided, from the bootstrap standard error (normal "
                                   f"approximation); p_holm: Holm's adjustment over the {len(comparisons)} "
                                   f"comparisons in this table (a difference is claimed only where p_holm < 0.05; "
                                   f"the intervals are per comparison, not adjusted). {self.boot_note}")

    def main_comparison(self) -> pd.DataFrame:
        """Corrected minus authors: one interval over training seeds and test proteins."""
        main = statistics.main_comparison(self.pred, self.labels, CORRECTED, AUTHORS, n_boot=self.n_boot,
                                          seed=self.seed)
        if not main:
            return pd.DataFrame()
        self.summary["main_comparison"] = _plain(main)
        table = mark_uninformative(pd.DataFrame([{**main, "model_a": runs.display_name(CORRECTED),
                                                  "model_b": runs.display_name(AUTHORS),
                                                  "seeds": ", ".join(map(str, main["seeds"]))}]).round(4))
        return self.out.table("main_comparison", table, index=False,
                              note=f"{runs.display_name(CORRECTED)} minus {runs.display_name(AUTHORS)}, per-protein "
                                   "sample F1, runs paired by training seed. One 95% interval over both sources of "
                                   "variation: a two-level bootstrap that resamples the seeds and the test proteins "
                                   "(the protein draw shared by the drawn seeds, since every seed scores the same "
                                   "proteins), seed and protein deviations scaled by sqrt(k/(k-1)); percentile "
                                   f"interval. {self.boot_note}")

    def seed_paired_differences(self) -> pd.DataFrame:
        """Corrected minus authors per training seed, with a t interval over seeds."""
        seed_pairs = statistics.seed_paired_differences(self.results, CORRECTED, AUTHORS)
        if len(seed_pairs):
            seed_pairs = seed_pairs.assign(model_a=runs.display_name(CORRECTED),
                                           model_b=runs.display_name(AUTHORS)).round(4)
            self.out.table("seed_paired_differences", seed_pairs, index=False,
                           note="corrected minus authors per training seed (protein level, test); t interval over "
                                "seeds (none with one seed).")
        return seed_pairs

    def per_label(self) -> pd.DataFrame:
        """F1 and average precision per label with bootstrap intervals (figures and a table)."""
        boot = statistics.bootstrap_per_label(self.pred, self.labels, models=self.main_models, n_boot=self.n_boot,
                                              seed=self.seed)
        for metric in ("f1", "average_precision"):
            self.out.figure(f"per_label_{metric}", figures.per_label_intervals(boot, self.labels, metric=metric))

        table = (boot.assign(cell=[interval_cell(r.value, r.ci_low, r.ci_high, r.n) for r in boot.itertuples()],
                             model=boot["model"].map(runs.display_name))
                 .pivot_table(index=["model", "metric"], columns="label", values="cell", aggfunc="first")[self.labels])
        self.out.table("per_label_intervals", table, note=self.boot_note)
        self.out.figure("pr_curves", figures.pr_curves(self.pred, self.labels, self.main_models))
        return table

    def calibration(self) -> pd.DataFrame:
        """F1 against threshold on validation, the reliability diagram, and ECE (with its sampling
        floor at this test size) and Brier per model."""
        self.out.figure("f1_vs_threshold", figures.f1_vs_threshold(self.pred, self.labels, CORRECTED))
        self.out.figure("reliability", figures.reliability(self.pred, self.labels, self.main_models))
        calib = statistics.calibration_table(self.pred, self.labels, models=self.main_models, seed=self.seed)
        self.summary["calibration"] = {m: _plain(r) for m, r in zip(calib["model"], calib.to_dict("records"))}
        return self.out.table("calibration", calib.assign(model=calib["model"].map(runs.display_name)).round(4),
                              index=False, note="Expected calibration error (10 equal-width bins, all labels pooled) "
                                                "and Brier score; protein level, test; mean over seeds. ECE floor: "
                                                "the ECE that perfectly calibrated forecasts reach at this test size "
                                                "(labels drawn from each seed's own forecasts, 1000 draws, averaged "
                                                "over seeds like the ECE): its mean and 95th percentile. An ECE "
                                                "below the floor's 95th percentile is not told apart from noise.")

    def thresholds(self) -> pd.DataFrame:
        """The chosen thresholds per label (protein level, first seed) and which are fallbacks."""
        sel = self.results[(self.results["level"] == "protein") & (self.results["split"] == "test")
                           & self.results["model"].isin(self.main_models)
                           & self.results["metric"].isin(["threshold", "threshold_fallback"])]
        if sel.empty:
            return pd.DataFrame()
        sel = sel[sel["seed"] == sel.groupby("model")["seed"].transform("min")]
        wide = sel.pivot_table(index=["model", "label"], columns="metric", values="value", aggfunc="first")
        if "threshold_fallback" not in wide:
            wide["threshold_fallback"] = np.nan          # stage outputs written before fallbacks were recorded
        cell = [f"{t:g}" + (" (fallback: no positive in validation)" if f == 1 else "")
                for t, f in zip(wide["threshold"], wide["threshold_fallback"])]
        table = (wide.assign(cell=cell).reset_index()
                 .pivot(index="model", columns="label", values="cell")[self.labels])
        table = table.reindex([m for m in self.main_models if m in table.index])     # the main table's order
        table.index = [runs.display_name(m) for m in table.index]
        table.index.name = "model"
        return self.out.table("thresholds", table,
                              note=f"Per-label protein-level thresholds (first seed), tuned on validation where the "
                                   f"configuration tunes them. A label without a positive validation protein cannot "
                                   f"be tuned (its F1 is undefined at every threshold): it keeps the fallback "
                                   f"{scoring.FALLBACK_THRESHOLD:g}, recorded as threshold_fallback in the metrics and "
                                   f"in the checkpoint.")

    def split_variation(self) -> pd.DataFrame:
        """Mean, sd and t interval over cross-validation folds and re-splits (empty without them)."""
        parts = [statistics.resplit_summary(self.results, by=by).assign(over=by) for by in ("fold", "resplit")
                 if by in self.results and self.results[by].notna().any()]
        if not parts:
            return pd.DataFrame()
        variation = pd.concat(parts, ignore_index=True)
        return self.out.table("resplit_variation",
                              variation.assign(model=variation["model"].map(runs.display_name)).round(4), index=False,
                              note="Mean, sd and 95% t interval over data splits (seeds averaged within a split).")

    def permutation_control(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """What the label-permutation control rules out (summary) and its first run per label."""
        control = runs.CONTROL_PERMUTED
        if control not in set(self.pred["model"]):
            return pd.DataFrame(), pd.DataFrame()
        ctl = statistics.permutation_control(self.pred, self.labels, control=control, n_perm=self.n_perm,
                                             seed=self.seed)
        plain = {k: v for k, v in ctl.items() if k != "per_label"}
        self.summary["permutation_control"] = _plain(plain)
        summary = pd.DataFrame([plain]).round(4)
        self.out.table("permutation_control", summary, index=False,
                       note=f"Chance: each control run's predictions assigned to the test proteins at random "
                            f"({self.n_perm} permutations); excess = observed - that null's mean, one value per "
                            f"run ({ctl['n_runs']} runs, each with its own permutation of the training labels). "
                            "Over runs: the mean excess, its one-sided 95% upper bound (t), and the excess a "
                            "one-sided 5% t test detects with 80% power given the observed run-to-run sd "
                            "(detectable). leak_detected: that test on the macro AP excess rejects. Not detected "
                            "means the excess is below the upper bound, not that it is 0: a leak smaller than "
                            "'detectable' would often be missed. One run: no spread, no bound; leak_detected = "
                            "macro AP above the null's 95th percentile.")
        return summary, ctl["per_label"].round(4)

    def cooccurrence(self) -> None:
        self.out.figure("cooccurrence", figures.cooccurrence(self.proteins, self.pred, self.labels, CORRECTED))

    def training_curves(self) -> None:
        history = self.history
        curves = history[history["model"].map(lambda m: runs.kind(m) != "ablation")] if "model" in history else history
        self.out.figure("training_curves", figures.training_curves(curves))

    def attention_maps(self, n: int = 3) -> None:
        """Where the corrected model's cross-attention goes for the first ``n`` test proteins."""
        emb_dir = self.stage_dir("02_embeddings")
        seq_store, img_store = EmbeddingStore(emb_dir / "sequences"), EmbeddingStore(emb_dir / "images")
        ck = Checkpoint.load(self.train_dir / "checkpoint-corrected", labels=self.labels)
        model, end_row = ck.model, trained_end_token(ck.meta()) == "keep"   # the rows it was trained on
        images = pd.read_parquet(self.data_dir / "images.parquet")
        by_id = self.proteins.set_index("protein_id")
        picks = images[images["split"] == "test"].groupby("protein_id").head(1).head(n)
        examples = [{"image": load_image(self.profile_dir / row.path), "img_tokens": img_store.get(row.image_id),
                     "seq_tokens": seq_store.get(by_id.loc[row.protein_id, "seq_hash"], end_row=end_row),
                     "title": f"{row.protein_id}: "
                              + ", ".join(lab for lab in self.labels if images.loc[row.Index, lab])}
                    for row in picks.itertuples()]
        self.out.figure("attention_maps", figures.attention_maps(model, examples))

    def ablations(self) -> pd.DataFrame:
        abl = self.results[self.results["model"].map(runs.kind) == "ablation"]
        return self.out.table("ablations", tables.paper_table(abl).round(3),
                              note="Protein level, test split, mean over seeds; one switch of corrected per row.")

    def write(self) -> list[Path]:
        """``figures/<profile>/`` (figures, tables, a manifest of exactly these files) and the tidy
        table of all metrics in ``05_figures/``, each in one step."""
        inputs = [self.train_dir / "metrics.csv", self.base_dir / "metrics.csv", self.train_dir / "history.csv",
                  self.train_dir / "predictions.parquet", self.base_dir / "predictions.parquet"]
        with self.publishing(self.fig_dir, inputs=inputs, lock=self.fig_lock) as (tmp, _):
            written = self.out.write(tmp, self.cfg["figures"]["formats"])
            summary = {**self.summary, "main_table": _cells(self.out.tables.get("main_table"))}
            (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
            written.append(tmp / SUMMARY)
        with self.publishing(inputs=inputs) as (tmp, extra):
            self.results_in.assign(provenance=self.caption).to_csv(tmp / "all_metrics.csv", index=False)
            extra["figures_dir"] = str(self.fig_dir)
        self.release()
        return written

    def run(self) -> list[Path]:
        self.main_table()
        self.metrics_by_level()
        self.paired_comparisons()
        self.main_comparison()
        self.seed_paired_differences()
        self.per_label()
        self.calibration()
        self.thresholds()
        self.split_variation()
        self.permutation_control()
        self.cooccurrence()
        self.label_counts()
        self.confusion()
        self.prediction_gallery()
        self.training_curves()
        self.attention_maps()
        self.ablations()
        return self.write()


# ---------------------------------------------------------------------------------------------
# summary.json, and the README quotes checked against it

def _plain(d: dict) -> dict:
    """JSON-ready: numpy scalars to Python, NaN to None."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.generic,)):
            v = v.item()
        if isinstance(v, float) and math.isnan(v):
            v = None
        out[str(k)] = v
    return out


def _cells(entry) -> dict:
    """The main table's cells as {model: {column: text}} (what its Markdown file shows)."""
    if entry is None:
        return {}
    table = entry[0]
    return {str(m): {str(c): str(v) for c, v in row.items()} for m, row in table.iterrows()}


class ReadmeCheckError(UserError):
    """A README names a summary file that is missing or unreadable."""


# In a README: a number followed by an HTML comment naming where it comes from, e.g.
#   <!-- summary-file: figures/demo/summary.json -->      (the file for the quotes that follow)
#   +0.724<!-- summary: main_comparison/mean_difference --> [0.586<!-- summary: main_comparison/ci_low -->, ...]
#   0.921 ± 0.006<!-- summary: main_table/fusion (corrected)/protein · F1 -->
# The comments do not render; ``readme_mismatches`` compares each quote with the file.
_FILE_TAG = re.compile(r"<!--\s*summary-file:\s*(?P<path>\S+)\s*-->")
_QUOTE_TAG = re.compile(r"(?P<text>[+\-\u2212]?\d+(?:\.\d+)?(?:\s*±\s*\d+(?:\.\d+)?)?)\s*"
                        r"<!--\s*summary:\s*(?P<key>[^>]*?)\s*-->")


def _lookup(summary: dict, key: str):
    node = summary
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def quote_matches(quoted: str, value) -> bool:
    """Does the README text ``quoted`` show ``value`` (a number at the quoted decimals, or a cell)?"""
    text = quoted.replace("\u2212", "-").strip()
    if isinstance(value, str):
        return " ".join(text.split()) == " ".join(value.split())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    text = text.lstrip("+")
    decimals = len(text.split(".")[1]) if "." in text else 0
    shown = f"{value:.{decimals}f}"
    return shown == text or (shown.lstrip("-") == text.lstrip("-") and float(shown) == 0)


def readme_mismatches(text: str, *, root: str | Path) -> list[str]:
    """Every tagged quote of ``text`` that its summary file does not back, one line each
    (line number, key, what the README says, what the file says). Summary paths are relative
    to ``root``; a quote before any ``summary-file`` tag is an error too."""
    events = sorted([(m.start(), "file", m) for m in _FILE_TAG.finditer(text)]
                    + [(m.start(), "quote", m) for m in _QUOTE_TAG.finditer(text)], key=lambda e: e[0])
    problems, current, name = [], None, None
    for pos, kind, m in events:
        line = text.count("\n", 0, pos) + 1
        if kind == "file":
            name = m["path"]
            path = Path(root) / name
            try:
                current = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ReadmeCheckError(f"{path}: not found (named on README line {line}; run notebook 05 of that "
                                       "profile first)") from None
            except (OSError, json.JSONDecodeError) as exc:
                raise ReadmeCheckError(f"{path}: not a readable summary ({exc})") from None
            continue
        if current is None:
            problems.append(f"line {line}: quote '{m['text']}' of '{m['key']}' before any summary-file tag")
            continue
        try:
            value = _lookup(current, m["key"])
        except KeyError as exc:
            problems.append(f"line {line}: '{m['key']}' is not in {name} (no '{exc.args[0]}')")
            continue
        if not quote_matches(m["text"], value):
            problems.append(f"line {line}: {m['key']}: README says {m['text']}, {name} says {value}")
    return problems


def tagged_quotes(text: str) -> int:
    """How many tagged quotes ``text`` holds."""
    return len(_QUOTE_TAG.findall(text))
