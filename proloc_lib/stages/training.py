"""Notebook 03's driver: the fusion model trained in every run of the plan, scored, checkpointed.

``TrainingStage`` is the notebook's sections (train the plan, cross-validation, attention MIL, the
permutation control and re-splits, write); the functions below are its parts, each tested without
papermill. Every result row is named by a run id (``core.runs``: ``fusion.corrected``,
``ablation.mask_off``, ``cv.corrected``, ...) in the ``model`` column, its label in ``display``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from proloc_lib.core import manifest, runs
from proloc_lib.core.errors import UserError
from proloc_lib.core.fileio import full_disk_as_error
from proloc_lib.core.runtime import seed_everything
from proloc_lib.data import splits
from proloc_lib.data.images import summarize_image_statistics
from proloc_lib.evaluation import scoring
from proloc_lib.stages.common import (
    SPLITS,
    STAGE_TABLES,
    STORE_FILES,
    RunResults,
    Stage,
    StageData,
    _collect,
    combine,
    load_stage_data,
)
from proloc_lib.training import distributed, loop, mil, settings
from proloc_lib.training.checkpoint import Checkpoint
from proloc_lib.training.datasets import IMAGE_LABEL_PREFIX, FusionDataset, pad_length
from proloc_lib.training.datasets import image_samples as training_image_samples
from proloc_lib.training.plan import Plan

PERMUTED_CONTROL = runs.CONTROL_PERMUTED


# ---------------------------------------------------------------------------------------------
# building blocks

def image_samples(data: StageData, split: str | tuple[str, ...], *, targets: str = "protein",
                  proteins: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per image of ``split`` (a split name, or several: ``("train", "val")``) with its
    protein's sequence key and the training targets.

    ``targets="protein"``: the union of the protein's labels; ``"image"``: the image row's own
    label columns (the published loop). Row order is the same for both. An image listed under two
    proteins is two rows, one per protein. The authors' own test labels (``authors_table:<label>``
    columns of images.parquet, full profile) come along, for scoring.
    """
    prot = data.proteins if proteins is None else proteins
    wanted = (split,) if isinstance(split, str) else tuple(split)
    samples = training_image_samples(data.images, prot, data.labels)
    samples = samples[samples["split"].isin(wanted)].reset_index(drop=True)
    if targets == "image":
        own = [IMAGE_LABEL_PREFIX + lab for lab in data.labels]
        missing = [lab for lab, col in zip(data.labels, own) if col not in samples.columns]
        if missing:
            raise UserError(f"{data.data_dir / 'images.parquet'}: no image label columns {missing} "
                            "(training.targets: image needs them)")
        samples[data.labels] = samples[own].to_numpy(dtype=int)
    authors = [scoring.AUTHORS_PREFIX + lab for lab in data.labels]
    if all(c in data.images.columns for c in authors):
        extra = data.images[["image_id", "protein_id", *authors]].drop_duplicates(["image_id", "protein_id"])
        samples = samples.merge(extra, on=["image_id", "protein_id"], how="left", validate="many_to_one")
    return samples


def fusion_datasets(data: StageData, *, targets: str = "protein", image_variant: str | None = None,
                    proteins: pd.DataFrame | None = None, train_on=("train",)) -> dict[str, FusionDataset]:
    """train/val/test ``FusionDataset`` over the stores (``image_variant``: that image store), and one
    per ``train_on`` value beyond "train" (``"train+val"``: the train and val proteins together)."""
    img_store = data.image_store(image_variant)
    names = {s: (s,) for s in SPLITS} | {t: settings.TRAINING_SPLITS[t] for t in train_on}
    return {name: FusionDataset(image_samples(data, parts, targets=targets, proteins=proteins), data.labels,
                                data.seq_store, img_store) for name, parts in names.items()}


def _job(datasets: dict, cfg: settings.TrainConfig, *, seed: int, resume_dir: Path | None = None) -> loop.TrainJob:
    """One training run on ``datasets[cfg.train_on]`` (validation loss on ``datasets["val"]``: for
    ``train+val`` only reported, those proteins being trained on; the "global" padding width is over
    every split)."""
    datasets = for_config(datasets, cfg)
    train = datasets[cfg.train_on]
    return loop.TrainJob(train_ds=train, val_ds=datasets["val"], cfg=cfg, seed=int(seed), resume_dir=resume_dir,
                         global_pad_to=_pad_to(cfg, train, datasets) if cfg.padding == "global" else None)


def training_set(datasets: dict, cfg: settings.TrainConfig) -> dict:
    """What a run of ``cfg`` trains on: ``train_on``, proteins, distinct images and samples (image rows)."""
    s = datasets[cfg.train_on].samples
    return {"train_on": cfg.train_on, "train_proteins": int(s["protein_id"].nunique()),
            "train_images": int(s["image_id"].nunique()), "train_samples": int(len(s))}


def for_config(datasets: dict, cfg: settings.TrainConfig) -> dict[str, FusionDataset]:
    """The datasets with the sequence rows ``cfg`` trains and predicts on (``cfg.end_token``)."""
    return {name: ds.for_config(cfg) for name, ds in datasets.items()}


def _pad_to(cfg: settings.TrainConfig, ds: FusionDataset, datasets: dict) -> int | None:
    """Padding width under ``cfg.padding`` (``pad_length``: one rule for training and inference).
    ``"split"`` pads each dataset to its own longest sequence: for ``train+val`` that is the whole
    benchmark train file, as the published prott5.py pads each file."""
    return pad_length(cfg, ds, all_splits=[datasets[s] for s in SPLITS])


def _predict(model, datasets: dict, cfg: settings.TrainConfig, device: str, splits_=("val", "test")) -> dict:
    datasets = for_config(datasets, cfg)
    return {s: loop.predict_proba(model, datasets[s], device, pad_to=_pad_to(cfg, datasets[s], datasets))
            for s in splits_}


# ---------------------------------------------------------------------------------------------
# notebook 03: training runs

def run_fusion_plan(data: StageData, plan: Plan, *, device: str = "cpu", progress: bool = True,
                    resume_root: str | Path | None = None, ranks: int = 1) -> RunResults:
    """Train every run of the plan (all its seeds), predict val and test, evaluate.

    Thresholds as each configuration chooses them (tuned on validation or fixed 0.5). Returns
    ``RunResults``; ``models`` holds the first seed's model of every run. ``ranks``: training
    processes, one GPU each (``training.distributed``); every run here is trained alike.
    """
    grouped: dict[str, list[dict]] = {}
    for r in plan.runs:
        grouped.setdefault(r["run_id"], []).append(r)
    cache: dict[tuple, dict] = {}
    train_on = tuple(dict.fromkeys(r["train"].train_on for r in plan.runs if r["train"].train_on != "train"))

    def datasets_for(targets, variant):
        if (targets, variant) not in cache:
            cache[(targets, variant)] = fusion_datasets(data, targets=targets, image_variant=variant,
                                                        train_on=train_on)
        return cache[(targets, variant)]

    planned = []   # (run, its config, its datasets, the datasets it is scored on), every seed of every run
    for run_id, group in grouped.items():
        tcfg, variant = group[0]["train"], group[0].get("image_variant")
        # images scored on their own labels (data.eval_targets)
        sets = datasets_for(tcfg.targets, variant), datasets_for(data.eval_targets, variant)
        planned += [(r, tcfg, *sets) for r in group]
    if progress:
        print("== training", ", ".join(f"{rid} (seeds {', '.join(str(r['seed']) for r in g)})"
                                       for rid, g in grouped.items()))
    # every run in one call: on the CPU they share the cores (loop.train_jobs), with ranks the GPUs
    trained = distributed.train_jobs(
        [_job(ds, tcfg, seed=r["seed"], resume_dir=Path(resume_root) / r["run_id"] / f"seed-{r['seed']}"
              if resume_root else None) for r, tcfg, ds, _ in planned],
        data.labels, device=device, progress=progress, ranks=ranks)
    metrics, preds, hists, models = [], [], [], {}
    for (r, tcfg, ds, ds_eval), (model, hist) in zip(planned, trained):
        run_id, seed = r["run_id"], r["seed"]
        probs = _predict(model, ds, tcfg, device)
        res, thresholds, pred = scoring.evaluate(
            run_id, data.labels, data.proteins, (ds_eval["val"].samples, probs["val"]),
            (ds_eval["test"].samples, probs["test"]), seed=seed, tune=tcfg.thresholds == "tuned",
            config=r["config"], config_hash=tcfg.hash(),
            strict_threshold=tcfg.thresholds == "fixed", provenance=data.note, truth=data.truth,
            training_set=training_set(ds, tcfg))
        metrics.append(res)
        preds.append(pred)
        hists.append(hist.assign(model=run_id, seed=seed))
        models.setdefault(run_id, (model, thresholds, tcfg))   # the first seed's
    return _collect(metrics, preds, hists, models, datasets_for("protein", None))


@dataclass(kw_only=True)
class _SplitRun:
    """One run on the split that ``proteins`` carries (a cross-validation fold, a re-split)."""
    proteins: pd.DataFrame
    cfg: settings.TrainConfig
    run_id: str
    config: str
    seed: int
    fold: int | None = None


def _train_and_score(data: StageData, split_runs: list[_SplitRun], *, device: str, progress: bool,
                     ranks: int = 1) -> list[tuple]:
    """Train the runs at once (``loop.train_jobs``), then score each on its own split:
    [(tidy metrics, predictions, history)] in order."""
    sets = []
    for sr in split_runs:
        extra = () if sr.cfg.train_on == "train" else (sr.cfg.train_on,)
        ds = fusion_datasets(data, targets=sr.cfg.targets, proteins=sr.proteins, train_on=extra)
        ds_eval = (fusion_datasets(data, targets=data.eval_targets, proteins=sr.proteins)
                   if sr.cfg.targets != data.eval_targets else ds)
        sets.append((ds, ds_eval))
    trained = distributed.train_jobs([_job(ds, sr.cfg, seed=sr.seed) for sr, (ds, _) in zip(split_runs, sets)],
                                     data.labels, device=device, progress=progress, ranks=ranks)
    out = []
    for sr, (ds, ds_eval), (model, hist) in zip(split_runs, sets, trained):
        probs = _predict(model, ds, sr.cfg, device)
        res, _, pred = scoring.evaluate(sr.run_id, data.labels, sr.proteins, (ds_eval["val"].samples, probs["val"]),
                                           (ds_eval["test"].samples, probs["test"]), seed=sr.seed,
                                           tune=sr.cfg.thresholds == "tuned", config=sr.config,
                                           config_hash=sr.cfg.hash(), fold=sr.fold, provenance=data.note,
                                           truth=data.truth, training_set=training_set(ds, sr.cfg))
        out.append((res, pred, hist.assign(model=sr.run_id, seed=sr.seed)))
    return out


def run_cross_validation(data: StageData, plan: Plan, *, device: str = "cpu", seed: int = 0,
                         progress: bool = True, ranks: int = 1) -> RunResults:
    """Train ``plan.cross_validation`` once per fold (run id ``cv.<config>``, the ``fold`` column set).

    Fold f is the test side, fold f+1 the validation side (``splits.fold_split``). Empty when the
    plan has no cross-validation or the protein table no ``fold`` column.
    """
    if not plan.cross_validation or "fold" not in data.proteins.columns:
        return RunResults()
    name = plan.cross_validation
    cv_cfg, run_id = plan.configs[name], runs.make_id("cv", name)
    folds = range(int(data.proteins["fold"].max()) + 1)
    scored = _train_and_score(
        data, [_SplitRun(proteins=data.proteins.assign(split=splits.fold_split(data.proteins["fold"], f)),
                         cfg=cv_cfg, run_id=run_id, config=name, seed=seed, fold=f) for f in folds],
        device=device, progress=progress, ranks=ranks)
    return _collect([res for res, _, _ in scored], [pred.assign(fold=f) for f, (_, pred, _) in zip(folds, scored)],
                    [hist.assign(fold=f) for f, (_, _, hist) in zip(folds, scored)])


def run_attention_mil(data: StageData, fusion: RunResults, *, device: str = "cpu", seed: int = 0,
                      of: str = runs.FUSION_CORRECTED) -> RunResults:
    """Attention over all images of a protein (``mil``) on the frozen pooled image
    representations of run ``of`` (first seed); run id ``fusion.corrected_mil``, protein level only."""

    if of not in fusion.models:
        return RunResults()
    model, _, tcfg = fusion.models[of]
    ds = for_config(fusion.datasets, tcfg)
    bag_sets = {s: mil.bags(ds[s].samples, mil.image_features(model, ds[s], device, pad_to=_pad_to(tcfg, ds[s], ds)),
                            data.labels) for s in SPLITS}
    mil_model = mil.fit_mil(bag_sets["train"], bag_sets["val"], len(data.labels), seed=seed)
    bag_probs = {s: mil.predict_bags(mil_model, bag_sets[s]) for s in ("val", "test")}
    bag_rows = {s: data.proteins.set_index("protein_id").loc[bag_sets[s][0]].reset_index() for s in ("val", "test")}
    run_id = f"{of}_mil"
    first_seed = int(fusion.metrics.loc[fusion.metrics["model"] == of, "seed"].min())
    res, _, pred = scoring.evaluate(run_id, data.labels, data.proteins, (bag_rows["val"], bag_probs["val"]),
                                       (bag_rows["test"], bag_probs["test"]), seed=first_seed, tune=True,
                                       config=runs.parse(of)[1], config_hash=tcfg.hash(), image_level=False,
                                       provenance=data.note)
    return _collect([res], [pred], [])


def permute_labels(proteins: pd.DataFrame, labels: list[str], *, seed: int,
                   splits_=("train", "val")) -> pd.DataFrame:
    """The protein table with the label vectors shuffled among the proteins of each split in
    ``splits_`` (within a split: prevalence unchanged, any link between features and labels gone).
    Test proteins keep their true labels."""
    out = proteins.copy()
    rng = np.random.default_rng(seed)
    cols = [out.columns.get_loc(lab) for lab in labels]
    for split in splits_:
        rows = np.flatnonzero(out["split"].to_numpy() == split)
        out.iloc[rows, cols] = out.iloc[rng.permutation(rows), cols].to_numpy()
    return out


def run_permutation_control(data: StageData, plan: Plan, *, device: str = "cpu", seed: int | None = None,
                            progress: bool = True, ranks: int = 1) -> RunResults:
    """``control.permuted_labels``: ``plan.control`` trained, selected (early stopping) and
    thresholded on permuted training and validation labels, scored on the true test labels;
    one run per seed of ``plan.control_seeds`` (or only ``seed``).

    Nothing it is fitted or chosen on carries the true labels, so any excess over chance is a
    leak; how small a leak the runs can detect depends on their number
    (``statistics.permutation_control``). (Selecting on the true validation labels is not enough: where
    images follow the labels, as in the demo, the choice of epoch and thresholds on true
    validation labels alone lifts a model trained on noise above chance.)"""
    if not plan.control:
        return RunResults()
    tcfg = plan.configs[plan.control]
    seeds = plan.control_seeds if seed is None else [seed]
    # one run per control seed, each with its own permutation: a single noise-trained run can sit
    # above its shuffle null by chance (its scores cluster by image class); several show whether it does so
    # systematically (statistics.permutation_control)
    true_test = fusion_datasets(data, targets=data.eval_targets)["test"]   # test: the true labels
    permuted = {s: permute_labels(data.proteins, data.labels, seed=s) for s in seeds}
    extra = () if tcfg.train_on == "train" else (tcfg.train_on,)
    sets = {s: {**fusion_datasets(data, targets="protein", proteins=permuted[s], train_on=extra),
                "test": true_test} for s in seeds}  # train, val: permuted
    trained = distributed.train_jobs([_job(sets[s], tcfg, seed=s) for s in seeds], data.labels, device=device,
                                     progress=progress, ranks=ranks)
    metrics, preds, hists = [], [], []
    for s, (model, hist) in zip(seeds, trained):
        ds = sets[s]
        probs = _predict(model, ds, tcfg, device)
        res, _, pred = scoring.evaluate(PERMUTED_CONTROL, data.labels, permuted[s], (ds["val"].samples, probs["val"]),
                                           (ds["test"].samples, probs["test"]), seed=s,
                                           tune=tcfg.thresholds == "tuned", config=plan.control,
                                           config_hash=tcfg.hash(), provenance=data.note, truth=data.truth,
                                           training_set=training_set(ds, tcfg))
        metrics.append(res)
        preds.append(pred)
        hists.append(hist.assign(model=PERMUTED_CONTROL, seed=s))
    return _collect(metrics, preds, hists)


def resplit(data: StageData, method: str, *, seed: int, split_cfg: dict) -> pd.Series:
    """A fresh split (train/val/test per protein row) by one protocol of ``data.split``
    (``stratified`` or ``homology``: ``splits.split_proteins``, asserted disjoint)."""
    if method == "benchmark":
        raise UserError("training.resplits: 'benchmark' is one fixed split, not a re-split protocol "
                        "(use stratified or homology)")
    split, _ = splits.split_proteins(data.proteins, data.images, data.labels,
                                     {"val_fraction": 0.15, "test_fraction": 0.2, **split_cfg, "method": method},
                                     seed)
    return split


def run_resplits(data: StageData, plan: Plan, split_cfg: dict, *, device: str = "cpu",
                 progress: bool = True, ranks: int = 1) -> RunResults:
    """Variance over re-splits: ``plan.resplits['config']`` retrained on ``repeats`` fresh splits of
    each protocol in ``methods``; run id ``resplit.<method>``, repeat r with split seed = training
    seed = ``plan.seed_offset + r`` (in ``seed``)."""
    if not plan.resplits:
        return RunResults()
    tcfg = plan.configs[plan.resplits["config"]]
    repeats = [plan.seed_offset + r for r in range(plan.resplits["repeats"])]
    scored = _train_and_score(data, [
        _SplitRun(proteins=data.proteins.assign(split=resplit(data, method, seed=r, split_cfg=split_cfg).to_numpy()),
                  cfg=tcfg, run_id=runs.make_id("resplit", method), config=plan.resplits["config"], seed=r)
        for method in plan.resplits["methods"] for r in repeats],
        device=device, progress=progress, ranks=ranks)
    return _collect([res for res, _, _ in scored], [pred for _, pred, _ in scored], [hist for _, _, hist in scored])


# ---------------------------------------------------------------------------------------------
# checkpoints and outputs

def make_checkpoint(model, *, run_id: str, thresholds: dict, train_cfg: settings.TrainConfig, cfg: dict,
                    data: StageData) -> Checkpoint:
    """The typed checkpoint of one trained run (protein-level thresholds, encoders and store fingerprints)."""
    emb = cfg["embeddings"]
    return Checkpoint(model=model, run_id=run_id, labels=list(data.labels), label_map=data.data_manifest["label_map"],
                      thresholds=list(thresholds["protein"]),
                      threshold_fallback=list(thresholds.get("fallback", {}).get("protein", [])),
                      training=settings.train_config_dict(train_cfg),
                      config_hash=train_cfg.hash(),
                      encoders={"sequence": emb["sequence"], "image": emb["image"],
                                "max_residues": emb["max_residues"], "long_policy": emb["long_policy"],
                                "crop_grid": int(emb.get("crop_grid", 1)),
                                "jpeg_draft": bool(data.emb_manifest["image_store"].get("extraction", {})
                                                   .get("jpeg_draft"))},
                      sequence_encoder=data.emb_manifest["sequence_store"]["fingerprint"],
                      image_encoder=data.emb_manifest["image_store"]["fingerprint"],
                      provenance=cfg.get("provenance", {}),
                      training_images=training_image_statistics(data))


def training_image_statistics(data: StageData) -> dict:
    """Size and intensity of the training images as stored (a seeded sample), for predict's shift warning."""
    train = data.images[data.images["split"] == "train"] if "split" in data.images else data.images
    return summarize_image_statistics([data.data_dir.parent / p for p in train["path"]])


CHECKPOINT_RUNS = (runs.FUSION_CORRECTED, runs.FUSION_AUTHORS)


def checkpoint_dir_name(run_id: str) -> str:
    """``fusion.corrected`` -> ``checkpoint-corrected`` (what ``predict --checkpoint`` is given)."""
    return f"checkpoint-{runs.parse(run_id)[1]}"


def write_training_outputs(results: RunResults, out_dir: str | Path, *, cfg: dict, data: StageData,
                           params: dict, checkpoint_runs=CHECKPOINT_RUNS) -> Path:
    """Stage 03's folder, swapped into place whole: ``metrics.csv`` (tidy, + git commit),
    ``history.csv``, ``predictions.parquet``, ``checkpoint-<name>/`` per run of ``checkpoint_runs``
    that was trained (``Checkpoint.save``), ``manifest.json``."""
    with full_disk_as_error(f"stage 03's outputs in {out_dir}"), \
            manifest.stage_output(out_dir, "03_training", params, data.inputs(),
                                  provenance=cfg["provenance"]) as (tmp, extra):
        fill_training_outputs(tmp, extra, results, cfg=cfg, data=data, checkpoint_runs=checkpoint_runs)
    return Path(out_dir)


def fill_training_outputs(tmp: Path, extra: dict, results: RunResults, *, cfg: dict, data: StageData,
                          checkpoint_runs=CHECKPOINT_RUNS) -> None:
    """Stage 03's files into the temporary folder ``tmp`` of ``stage_output`` (``extra``: its manifest fields)."""
    results.metrics.assign(git_commit=manifest.git_commit()).to_csv(tmp / "metrics.csv", index=False)
    results.history.to_csv(tmp / "history.csv", index=False)
    results.predictions.to_parquet(tmp / "predictions.parquet", index=False)
    written = {}
    for run_id in checkpoint_runs:
        if run_id in results.models:
            model, thresholds, tcfg = results.models[run_id]
            ck = make_checkpoint(model, run_id=run_id, thresholds=thresholds, train_cfg=tcfg, cfg=cfg, data=data)
            written[run_id] = ck.save(tmp / checkpoint_dir_name(run_id)).name
    extra["checkpoints"] = written
    extra["runs"] = sorted(set(results.metrics["model"])) if len(results.metrics) else []


def training_params(plan: Plan, *, profile: str, seed: int, device: str, split: dict | None = None) -> dict:
    """Stage 03's manifest parameters: the profile, seed, device and every run with its switches
    (``split``: the profile's ``data.split``, which the re-splits follow)."""
    return {"profile": profile, "seed": seed, "device": device, **({"split": split} if split is not None else {}),
            "plan": [{"run_id": r["run_id"], "seed": r["seed"], "config_hash": r["train"].hash(),
                      **({"image_variant": r["image_variant"]} if "image_variant" in r else {}),
                      **settings.train_config_dict(r["train"])} for r in plan.runs],
            "cross_validation": plan.cross_validation, "control": plan.control,
            "control_seeds": plan.control_seeds, "resplits": plan.resplits}


def clear_resume(resume_root: str | Path) -> None:
    """Drop the per-epoch resume states once the stage output is written."""
    shutil.rmtree(resume_root, ignore_errors=True)


class TrainingStage(Stage):
    """Notebook 03: ``header``, ``train``, ``cross_validate``, ``attention_mil``, ``controls``, ``write``.

    ``gpus``: training processes, one GPU each (``training.distributed``; on the CPU, processes
    sharing the cores): every training call of the stage is spread over them, the rest stays here.
    """
    name = "03_training"

    reads = {"01_data_assembly": STAGE_TABLES, "02_embeddings": STORE_FILES}

    def __init__(self, profile, *, seed: int = 0, device: str = "auto", data_root=None, progress: bool = True,
                 gpus: int = 1):
        if int(gpus) < 1:
            raise UserError(f"gpus must be 1 or more, got {gpus}")
        self.progress, self.gpus = progress, int(gpus)   # how it runs, not what it computes: not a parameter
        super().__init__(profile, seed=seed, device=device, data_root=data_root)

    def open(self) -> None:
        self.plan = self.cfg.plan.for_run_seed(self.seed)   # expanded and checked with the profile
        seed_everything(self.seed)
        self.device  # checked before any work
        self.data = load_stage_data(self.profile, data_root=self.data_root, seed=self.seed)
        self.resume_root = self.out_dir.with_name(self.name + ".resume")
        self.fusion = self.cv = self.mil = self.control = self.resplit = RunResults()

    @classmethod
    def parameters_for(cls, cfg, *, seed: int, device: str, data_root=None) -> dict:
        return training_params(cfg.plan.for_run_seed(seed), profile=cfg.name, seed=seed, device=device,
                               split=cfg["data"].get("split", {}))

    def header(self) -> str:
        return (f"**Profile `{self.profile}`** on `{self.device}`: {len(self.data.proteins)} proteins, "
                f"{len(self.data.images)} images. {self.data.note}")

    def train(self) -> pd.DataFrame:
        """Every run of the plan (all seeds, the ablations) in one call; the test split's paper
        metrics per configuration, image and protein level (mean over seeds)."""
        self.fusion = run_fusion_plan(self.data, self.plan, device=self.device, progress=self.progress,
                                      resume_root=self.resume_root, ranks=self.gpus)
        return pd.concat({lvl: self.fusion.table(level=lvl, kinds=("fusion",)) for lvl in ("image", "protein")})

    def ablation_table(self) -> pd.DataFrame:
        """The ablations (first seed, their own schedule), test split; compared in notebook 05."""
        return self.fusion.table(kinds=("ablation",))

    def cross_validate(self) -> pd.DataFrame:
        """One run per fold of the grouped k-fold column (when the profile asks for it); mean ± sd over folds."""
        self.cv = run_cross_validation(self.data, self.plan, device=self.device, seed=self.plan.seeds[0],
                                       progress=self.progress, ranks=self.gpus)
        return self.cv.summary()

    def attention_mil(self) -> pd.DataFrame:
        """Attention over all images of a protein on the corrected model's frozen image representations."""
        self.mil = run_attention_mil(self.data, self.fusion, device=self.device, seed=self.seed)
        return combine(self.fusion, self.mil).table(kinds=("fusion",))

    def controls(self) -> pd.DataFrame:
        """The label-permutation control and the re-splits the profile asks for; test proteins."""
        self.control = run_permutation_control(self.data, self.plan, device=self.device, progress=self.progress,
                                               ranks=self.gpus)
        self.resplit = run_resplits(self.data, self.plan, self.cfg["data"].get("split", {}), device=self.device,
                                    progress=self.progress, ranks=self.gpus)
        return combine(self.fusion, self.control, self.resplit).summary(kinds=("fusion", "control", "resplit"))

    def results(self) -> RunResults:
        return combine(self.fusion, self.cv, self.mil, self.control, self.resplit)

    def write(self) -> Path:
        """The stage's folder, swapped into place whole; the per-epoch resume states are dropped after."""
        with full_disk_as_error(f"stage 03's outputs in {self.out_dir}"), \
                self.publishing(inputs=self.data.inputs()) as (tmp, extra):
            fill_training_outputs(tmp, extra, self.results(), cfg=self.cfg, data=self.data)
        clear_resume(self.resume_root)
        self.release()
        return self.out_dir

    def run(self) -> Path:
        self.train()
        self.cross_validate()
        self.attention_mil()
        self.controls()
        return self.write()
