"""Notebook 04's driver: every baseline on the same splits, thresholds tuned on validation, scored once on test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from proloc_lib.core import manifest
from proloc_lib.core.runtime import seed_everything
from proloc_lib.evaluation import scoring
from proloc_lib.stages.common import (
    SPLITS,
    STAGE_TABLES,
    STORE_FILES,
    RunResults,
    Stage,
    StageData,
    _collect,
    load_stage_data,
)
from proloc_lib.training import baselines

# ---------------------------------------------------------------------------------------------
# notebook 04: baselines


class _Recorder:
    """Collects baseline results: thresholds tuned on validation, val and test scored."""

    def __init__(self, data: StageData, seed: int):
        self.data, self.seed = data, seed
        self.metrics, self.predictions = [], []
        p, i = data.proteins, data.images
        self.P = {s: p[p["split"] == s].reset_index(drop=True) for s in SPLITS}
        # image rows carry their protein's split (the contract's images.parquet has it; join to be sure)
        i = i.drop(columns=["split"], errors="ignore").merge(p[["protein_id", "split"]], on="protein_id")
        # image rows are scored on their own labels where stage 01 wrote them (as the fusion model's
        # image level is); image models train on their protein's labels, as the corrected fusion does
        own = i if data.eval_targets == "image" else i.drop(columns=[lab for lab in data.labels if lab in i.columns]) \
            .merge(p[["protein_id", *data.labels]], on="protein_id")
        self.I = {s: own[own["split"] == s].reset_index(drop=True) for s in SPLITS}
        union = p.set_index("protein_id")[data.labels]
        self.Yi_train = {s: union.loc[self.I[s]["protein_id"]].to_numpy(dtype=int) for s in SPLITS}

    def record(self, run_id: str, val_probs, test_probs, *, on: str = "proteins") -> None:
        tables = self.I if on == "images" else self.P
        res, _, pred = scoring.evaluate(run_id, self.data.labels, self.data.proteins, (tables["val"], val_probs),
                                           (tables["test"], test_probs), seed=self.seed, tune=True,
                                           config="baseline", image_level=on == "images", provenance=self.data.note)
        self.metrics.append(res)
        self.predictions.append(pred)

    def protein_probs(self, run_id: str, split: str) -> np.ndarray:
        return protein_probs(pd.concat(self.predictions), run_id, split, self.P[split]["protein_id"], self.data.labels)


def protein_probs(predictions: pd.DataFrame, run_id: str, split: str, protein_ids, labels: list[str]) -> np.ndarray:
    """A run's protein-level probabilities on ``split``, rows in the order of ``protein_ids``."""
    sel = predictions[(predictions["model"] == run_id) & (predictions["split"] == split)
                      & (predictions["level"] == "protein")]
    return sel.set_index("protein_id").loc[list(protein_ids), [f"p:{lab}" for lab in labels]].to_numpy()


BASELINE_RUNS = tuple(f"baseline.{n}" for n in ("label_frequency", "composition_lr", "sequence_mlp", "image_mlp",
                                                "light_attention", "late_fusion", "early_fusion"))


def run_baselines_stage(data: StageData, bcfg: dict, *, seed: int = 0) -> RunResults:
    """Notebook 04: every baseline of ``BASELINE_RUNS`` on the same splits, thresholds tuned on
    validation, scored once on test (image models per image and per protein).

    ``bcfg``: the profile's ``baselines`` section (``mlp_hidden``, ``mlp_epochs``, ``logreg_C``,
    ``light_attention_epochs``).
    """
    rec = _Recorder(data, seed)
    P, imgs, labels = rec.P, rec.I, data.labels  # protein and image tables by split
    Y = {s: P[s][labels].to_numpy(dtype=int) for s in SPLITS}
    Yi = rec.Yi_train   # protein labels per image row (training and model selection)
    mlp = dict(hidden=bcfg["mlp_hidden"], epochs=bcfg["mlp_epochs"], seed=seed)

    # the floor: every protein gets the training prevalence
    rec.record("baseline.label_frequency", *(baselines.label_frequency(Y["train"], len(P[s])) for s in ("val", "test")))
    # amino-acid + dipeptide composition, one-vs-rest logistic regression (real sequences)
    X = {s: baselines.composition_matrix(P[s]["sequence"]) for s in SPLITS}
    predict = baselines.fit_logreg(X["train"], Y["train"], C=bcfg["logreg_C"], seed=seed)
    rec.record("baseline.composition_lr", predict(X["val"]), predict(X["test"]))
    # sequence-only: pooled sequence embedding + MLP
    Xs = {s: np.stack([t.numpy() for t in data.seq_store.get_many(P[s]["seq_hash"], pooled=True)]) for s in SPLITS}
    predict = baselines.fit_mlp(Xs["train"], Y["train"], Xs["val"], Y["val"], **mlp)
    rec.record("baseline.sequence_mlp", predict(Xs["val"]), predict(Xs["test"]))
    # image-only: pooled image tokens per image + MLP, averaged per protein
    Xi = {s: np.stack([t.numpy() for t in data.img_store.get_many(imgs[s]["image_id"], pooled=True)]) for s in SPLITS}
    predict = baselines.fit_mlp(Xi["train"], Yi["train"], Xi["val"], Yi["val"], **mlp)
    rec.record("baseline.image_mlp", predict(Xi["val"]), predict(Xi["test"]), on="images")
    # light attention over residues (sequence only)
    R = {s: data.seq_store.get_many(P[s]["seq_hash"]) for s in SPLITS}
    predict = baselines.fit_light_attention(R["train"], Y["train"], R["val"], Y["val"],
                                            epochs=bcfg["light_attention_epochs"], seed=seed)
    rec.record("baseline.light_attention", predict(R["val"]), predict(R["test"]))
    # late fusion: the mean of the two single-modality models' protein probabilities
    rec.record("baseline.late_fusion", *[(rec.protein_probs("baseline.sequence_mlp", s)
                                          + rec.protein_probs("baseline.image_mlp", s)) / 2 for s in ("val", "test")])
    # early fusion: pooled sequence and pooled image features concatenated per image
    pooled = dict(zip(data.proteins["seq_hash"], data.seq_store.get_many(data.proteins["seq_hash"], pooled=True)))
    hash_of = data.proteins.set_index("protein_id")["seq_hash"]
    Xe = {s: np.hstack([Xi[s], np.stack([pooled[hash_of[p]].numpy() for p in imgs[s]["protein_id"]])]) for s in SPLITS}
    predict = baselines.fit_mlp(Xe["train"], Yi["train"], Xe["val"], Yi["val"], **mlp)
    rec.record("baseline.early_fusion", predict(Xe["val"]), predict(Xe["test"]), on="images")
    return _collect(rec.metrics, rec.predictions, [])


def write_baseline_outputs(results: RunResults, out_dir: str | Path, *, cfg: dict, data: StageData,
                           params: dict) -> Path:
    """Stage 04's folder, swapped into place whole: ``metrics.csv``, ``predictions.parquet``, manifest."""
    with manifest.stage_output(out_dir, "04_baselines", params, data.inputs(),
                               provenance=cfg["provenance"]) as (tmp, extra):
        fill_baseline_outputs(tmp, extra, results)
    return Path(out_dir)


def fill_baseline_outputs(tmp: Path, extra: dict, results: RunResults) -> None:
    """Stage 04's files into the temporary folder ``tmp`` of ``stage_output``."""
    results.metrics.assign(git_commit=manifest.git_commit()).to_csv(tmp / "metrics.csv", index=False)
    results.predictions.to_parquet(tmp / "predictions.parquet", index=False)
    extra["runs"] = sorted(set(results.metrics["model"]))


class BaselinesStage(Stage):
    """Notebook 04: ``header``, ``train``, ``write``."""
    name = "04_baselines"

    reads = {"01_data_assembly": STAGE_TABLES, "02_embeddings": STORE_FILES}

    def open(self) -> None:
        seed_everything(self.seed)
        self.data = load_stage_data(self.profile, data_root=self.data_root, seed=self.seed)
        self.results = RunResults()

    @classmethod
    def parameters_for(cls, cfg, *, seed: int, device: str, data_root=None) -> dict:
        return {"profile": cfg.name, "seed": seed, "baselines": cfg["baselines"]}

    def header(self) -> str:
        return f"**Profile `{self.profile}`.** {self.data.note}"

    def train(self) -> pd.DataFrame:
        """Every baseline on the same splits; the test split's paper metrics per baseline."""
        self.results = run_baselines_stage(self.data, self.cfg["baselines"], seed=self.seed)
        return self.results.table()

    def write(self) -> Path:
        with self.publishing(inputs=self.data.inputs()) as (tmp, extra):
            fill_baseline_outputs(tmp, extra, self.results)
        self.release()
        return self.out_dir

    def run(self) -> Path:
        self.train()
        return self.write()
