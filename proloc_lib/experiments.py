"""The study's stage drivers: what notebooks 03 (training) and 04 (baselines) run.

The notebooks narrate and call these; every function here is tested without papermill
(``tests/test_experiments.py``). Every result row is named by a run id from ``runs``
(``fusion.corrected``, ``ablation.mask_off``, ``baseline.composition_lr``, ...) in the ``model``
column, with its human label in ``display``.

Notebook 03::

    data = experiments.load_stage_data(profile, data_root=data_root)
    plan = experiments.plan_runs(cfg)
    fusion = experiments.run_fusion_plan(data, plan, device=device, resume_root=...)
    cv = experiments.run_cross_validation(data, plan, device=device, seed=seed)
    mil = experiments.run_attention_mil(data, fusion, device=device, seed=seed)
    control = experiments.run_permutation_control(data, plan, device=device)
    resplit = experiments.run_resplits(data, plan, cfg["data"]["split"], device=device)
    results = experiments.combine(fusion, cv, mil, control, resplit)
    experiments.write_training_outputs(results, out_dir, cfg=cfg, data=data, params=...)

``run_training_stage`` does all of that in one call; ``run_baselines_stage`` and
``write_baseline_outputs`` are notebook 04.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import baselines, config, evaluation, manifest, runs, splits, training
from .checkpoint import Checkpoint
from .embeddings import EmbeddingStore
from .hpa import provenance_line
from .errors import UserError

SPLITS = ("train", "val", "test")
PERMUTED_CONTROL = runs.CONTROL_PERMUTED


# ---------------------------------------------------------------------------------------------
# inputs

@dataclass(kw_only=True)
class StageData:
    """What notebooks 01 and 02 wrote, opened once: tables, label order, stores, manifests."""
    labels: list[str]
    proteins: pd.DataFrame
    images: pd.DataFrame
    seq_store: EmbeddingStore
    img_store: EmbeddingStore
    data_dir: Path
    emb_dir: Path
    data_manifest: dict
    emb_manifest: dict
    note: str = ""                      # provenance line for every table (stage 01's build included)
    _variant_stores: dict = field(default_factory=dict, repr=False)

    def image_store(self, variant: str | None = None) -> EmbeddingStore:
        """The image store, or the one of an image feature variant (``02_embeddings/images-<name>/``)."""
        if variant is None:
            return self.img_store
        if variant not in self._variant_stores:
            path = self.emb_dir / f"images-{variant}"
            if not path.is_dir():
                raise UserError(f"{path}: no image store for the image variant '{variant}' (list it under "
                                "embeddings.image_variants in the profile and run notebook 02)")
            self._variant_stores[variant] = EmbeddingStore(path)
        return self._variant_stores[variant]

    @property
    def eval_targets(self) -> str:
        """Image-level scoring uses each image's own label columns where stage 01 wrote them
        (the paper's image-level setting); protein-level scoring always uses the proteins' labels."""
        return "image" if all(lab in self.images.columns for lab in self.labels) else "protein"

    def inputs(self) -> list[Path]:
        """The files a stage manifest lists as its inputs."""
        return [self.data_dir / "proteins.parquet", self.data_dir / "images.parquet", self.emb_dir / manifest.MANIFEST]


def provenance_note(prov: dict) -> str:
    """What the tables say about their inputs: stage 01's recorded provenance (the profile's, plus
    what a mirror build marked: synthetic images, stand-in sequences)."""
    return " ".join(filter(None, [config.provenance_note(prov), provenance_line(prov)]))


def load_stage_data(profile: str, *, data_root=None) -> StageData:
    """Open stage 01's tables and stage 02's stores (manifests checked: both stages complete)."""
    data_dir = config.stage_dir(profile, "01_data_assembly", data_root)
    emb_dir = config.stage_dir(profile, "02_embeddings", data_root)
    data_man, emb_man = manifest.read_manifest(data_dir), manifest.read_manifest(emb_dir)
    return StageData(labels=list(data_man["labels"]), proteins=pd.read_parquet(data_dir / "proteins.parquet"),
                     images=pd.read_parquet(data_dir / "images.parquet"),
                     seq_store=EmbeddingStore(emb_dir / "sequences"), img_store=EmbeddingStore(emb_dir / "images"),
                     data_dir=data_dir, emb_dir=emb_dir, data_manifest=data_man, emb_manifest=emb_man,
                     note=provenance_note(data_man.get("provenance") or {}))



# ---------------------------------------------------------------------------------------------
# the plan

@dataclass(kw_only=True)
class Plan:
    """The training section expanded: every run, checked before any work.

    ``runs``: one dict per (run, seed) from ``training.training_plan``; ``cross_validation``:
    the configuration trained per fold (or None); ``control``: the configuration of the
    label-permutation control (or None); ``resplits``: ``{"methods", "repeats", "config"}`` (or None).
    """
    runs: list[dict]
    seeds: list[int]
    configs: dict[str, training.TrainConfig]
    cross_validation: str | None = None
    control: str | None = None
    resplits: dict | None = None

    def table(self) -> pd.DataFrame:
        """One row per run and seed with every switch (what notebook 03 shows first)."""
        return pd.DataFrame([{"run": r["run_id"], "seed": r["seed"], "config_hash": r["train"].hash(),
                              **({"image_variant": r.get("image_variant")} if "image_variant" in r else {}),
                              **training.train_config_dict(r["train"])} for r in self.runs])


RESPLIT_KEYS = {"methods", "repeats", "config"}


def plan_runs(cfg: dict) -> Plan:
    """``training_plan`` plus the optional parts: cross-validation, control, re-splits.

    Profile keys (under ``training``): ``cross_validation: false | {config: name}``;
    ``control: false | {config: name}`` (default ``{config: corrected}``: the control is cheap and
    must land at chance); ``resplits: false | {methods: [stratified, homology], repeats: n,
    config: name}`` (default off; the full-extended tier turns it on).
    """
    section = cfg["training"]
    run_list = training.training_plan(section)
    base = section.get("base")
    configurations = section.get("configurations") or {"corrected": {}}

    def named(name, what):
        if not isinstance(name, str):
            raise ValueError(f"training.{what}.config must be a configuration name, got {name!r}")
        return training.make_config(name, base, **(configurations.get(name) or {}))

    def spec(value, what):
        """false/absent -> None; true -> {config: corrected}; a mapping must name only ``config``."""
        if not value:
            return None
        if value is True:
            return {"config": "corrected"}
        if not isinstance(value, dict) or set(value) - {"config"}:
            raise ValueError(f"training.{what} must be false, true or {{config: <name>}}, got {value!r}")
        return {"config": value.get("config", "corrected")}

    configs = {r["config"]: r["train"] for r in run_list if r["run_id"] == runs.make_id("fusion", r["config"])}
    cv = spec(section.get("cross_validation"), "cross_validation")
    if cv:
        configs.setdefault(cv["config"], named(cv["config"], "cross_validation"))
    control = spec(section.get("control", True), "control")
    if control:
        configs.setdefault(control["config"], named(control["config"], "control"))
    rs = section.get("resplits") or None
    if rs:
        unknown = set(rs) - RESPLIT_KEYS
        if unknown:
            raise ValueError(f"unknown keys in training.resplits {sorted(unknown)} (allowed: {sorted(RESPLIT_KEYS)})")
        rs = {"methods": list(rs.get("methods", ["stratified"])), "repeats": int(rs.get("repeats", 3)),
              "config": rs.get("config", "corrected")}
        configs.setdefault(rs["config"], named(rs["config"], "resplits"))
    return Plan(runs=run_list, seeds=list(section.get("seeds", [0])), configs=configs,
                cross_validation=cv["config"] if cv else None, control=control["config"] if control else None,
                resplits=rs)


# ---------------------------------------------------------------------------------------------
# building blocks

def image_samples(data: StageData, split: str, *, targets: str = "protein",
                  proteins: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per image of ``split`` with its protein's sequence key and the training targets.

    ``targets="protein"``: the union of the protein's labels; ``"image"``: the image row's own
    label columns (the published loop). Row order is the same for both.
    """
    prot = data.proteins if proteins is None else proteins
    samples = training.image_samples(data.images, prot, data.labels, split)
    if targets == "image":
        own = data.images.drop_duplicates("image_id").set_index("image_id")
        missing = [lab for lab in data.labels if lab not in own.columns]
        if missing:
            raise UserError(f"{data.data_dir / 'images.parquet'}: no image label columns {missing} "
                            "(training.targets: image needs them)")
        samples[data.labels] = own.loc[samples["image_id"], data.labels].to_numpy(dtype=int)
    return samples


def fusion_datasets(data: StageData, *, targets: str = "protein", image_variant: str | None = None,
                    proteins: pd.DataFrame | None = None) -> dict[str, training.FusionDataset]:
    """train/val/test ``FusionDataset`` over the stores (``image_variant``: that image store)."""
    img_store = data.image_store(image_variant)
    return {s: training.FusionDataset(image_samples(data, s, targets=targets, proteins=proteins), data.labels,
                                      data.seq_store, img_store) for s in SPLITS}


def _job(datasets: dict, cfg: training.TrainConfig, *, seed: int, resume_dir: Path | None = None) -> training.TrainJob:
    """One training run on ``datasets`` (every split: the "global" padding width is over all of them)."""
    return training.TrainJob(train_ds=datasets["train"], val_ds=datasets["val"], cfg=cfg, seed=int(seed),
                             resume_dir=resume_dir,
                             global_pad_to=_pad_to(cfg, datasets["train"], datasets) if cfg.padding == "global" else None)


def _pad_to(cfg: training.TrainConfig, ds: training.FusionDataset, datasets: dict) -> int | None:
    """Padding width under ``cfg.padding`` (training.pad_length: one rule for training and inference)."""
    return training.pad_length(cfg, ds, all_splits=list(datasets.values()))


def _predict(model, datasets: dict, cfg: training.TrainConfig, device: str, splits_=("val", "test")) -> dict:
    return {s: training.predict_proba(model, datasets[s], device, pad_to=_pad_to(cfg, datasets[s], datasets))
            for s in splits_}


def _with_display(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the ``display`` column (the human label of each run id), right after ``model``."""
    frame = frame.drop(columns=["display"], errors="ignore")
    frame.insert(frame.columns.get_loc("model") + 1, "display", runs.display_names(frame["model"]))
    return frame


@dataclass(kw_only=True)
class RunResults:
    """Tidy results of some runs: ``metrics`` (evaluation's columns + ``display``), ``predictions``
    (one row per image and protein per run, seed, split), ``history`` (one row per epoch per run
    and seed), ``models``: run id -> (model, thresholds by level, TrainConfig) of the first seed."""
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    models: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict, repr=False)   # the protein-target datasets (for MIL)

    def _select(self, kinds) -> pd.DataFrame:
        m = self.metrics
        return m if kinds is None or m.empty else m[m["model"].map(runs.kind).isin(kinds)]

    def table(self, *, level: str = "protein", kinds=None) -> pd.DataFrame:
        """The paper's metrics on the test split per run (mean over seeds), rows named by display name;
        ``kinds``: only runs of these kinds (``runs.kind``), e.g. ``("fusion",)``."""
        sel = self._select(kinds)
        if sel.empty:
            return pd.DataFrame()
        return evaluation.paper_table(sel, level=level)

    def summary(self, *, level: str = "protein", kinds=None) -> pd.DataFrame:
        """'mean ± sd' over seeds (or folds, or re-splits) per run."""
        sel = self._select(kinds)
        if sel.empty:
            return pd.DataFrame()
        return evaluation.summary_table(sel, level=level)


def _collect(metrics: list, preds: list, hists: list, models=None, datasets=None) -> RunResults:
    cat = lambda fs: pd.concat(fs, ignore_index=True) if fs else pd.DataFrame()
    m, p = cat(metrics), cat(preds)
    return RunResults(metrics=_with_display(m) if len(m) else m, predictions=_with_display(p) if len(p) else p,
                      history=cat(hists), models=models or {}, datasets=datasets or {})


def combine(*parts: RunResults) -> RunResults:
    """One result set from several (the stage's outputs)."""
    models, datasets = {}, {}
    for part in parts:
        models.update(part.models)
        datasets = datasets or part.datasets
    return _collect([p.metrics for p in parts if len(p.metrics)], [p.predictions for p in parts if len(p.predictions)],
                    [p.history for p in parts if len(p.history)], models, datasets)


# ---------------------------------------------------------------------------------------------
# notebook 03: training runs

def run_fusion_plan(data: StageData, plan: Plan, *, device: str = "cpu", progress: bool = True,
                    resume_root: str | Path | None = None) -> RunResults:
    """Train every run of the plan (all its seeds), predict val and test, evaluate.

    Thresholds as each configuration chooses them (tuned on validation or fixed 0.5). Returns
    ``RunResults``; ``models`` holds the first seed's model of every run.
    """
    grouped: dict[str, list[dict]] = {}
    for r in plan.runs:
        grouped.setdefault(r["run_id"], []).append(r)
    cache: dict[tuple, dict] = {}

    def datasets_for(targets, variant):
        if (targets, variant) not in cache:
            cache[(targets, variant)] = fusion_datasets(data, targets=targets, image_variant=variant)
        return cache[(targets, variant)]

    planned = []   # (run, its config, its datasets, the datasets it is scored on), every seed of every run
    for run_id, group in grouped.items():
        tcfg, variant = group[0]["train"], group[0].get("image_variant")
        # images scored on their own labels (data.eval_targets)
        sets = datasets_for(tcfg.targets, variant), datasets_for(data.eval_targets, variant)
        planned += [(r, tcfg, *sets) for r in group]
    if progress:
        print("== training", ", ".join(f"{rid} (seeds {', '.join(str(r['seed']) for r in g)})" for rid, g in grouped.items()))
    # every run in one call: on the CPU they share the cores (training.train_jobs)
    trained = training.train_jobs(
        [_job(ds, tcfg, seed=r["seed"], resume_dir=Path(resume_root) / r["run_id"] / f"seed-{r['seed']}"
              if resume_root else None) for r, tcfg, ds, _ in planned],
        data.labels, device=device, progress=progress)
    metrics, preds, hists, models = [], [], [], {}
    for (r, tcfg, ds, ds_eval), (model, hist) in zip(planned, trained):
        run_id, seed = r["run_id"], r["seed"]
        probs = _predict(model, ds, tcfg, device)
        res, thresholds, pred = evaluation.evaluate(
            run_id, data.labels, data.proteins, (ds_eval["val"].samples, probs["val"]),
            (ds_eval["test"].samples, probs["test"]), seed=seed, tune=tcfg.thresholds == "tuned",
            config=r["config"], config_hash=tcfg.hash(),
            strict_threshold=tcfg.thresholds == "fixed", provenance=data.note)
        metrics.append(res)
        preds.append(pred)
        hists.append(hist.assign(model=run_id, seed=seed))
        models.setdefault(run_id, (model, thresholds, tcfg))   # the first seed's
    return _collect(metrics, preds, hists, models, datasets_for("protein", None))


@dataclass(kw_only=True)
class _SplitRun:
    """One run on the split that ``proteins`` carries (a cross-validation fold, a re-split)."""
    proteins: pd.DataFrame
    cfg: training.TrainConfig
    run_id: str
    config: str
    seed: int
    fold: int | None = None


def _train_and_score(data: StageData, split_runs: list[_SplitRun], *, device: str, progress: bool) -> list[tuple]:
    """Train the runs at once (``training.train_jobs``), then score each on its own split:
    [(tidy metrics, predictions, history)] in order."""
    sets = []
    for sr in split_runs:
        ds = fusion_datasets(data, targets=sr.cfg.targets, proteins=sr.proteins)
        ds_eval = (fusion_datasets(data, targets=data.eval_targets, proteins=sr.proteins)
                   if sr.cfg.targets != data.eval_targets else ds)
        sets.append((ds, ds_eval))
    trained = training.train_jobs([_job(ds, sr.cfg, seed=sr.seed) for sr, (ds, _) in zip(split_runs, sets)],
                                  data.labels, device=device, progress=progress)
    out = []
    for sr, (ds, ds_eval), (model, hist) in zip(split_runs, sets, trained):
        probs = _predict(model, ds, sr.cfg, device)
        res, _, pred = evaluation.evaluate(sr.run_id, data.labels, sr.proteins, (ds_eval["val"].samples, probs["val"]),
                                           (ds_eval["test"].samples, probs["test"]), seed=sr.seed,
                                           tune=sr.cfg.thresholds == "tuned", config=sr.config,
                                           config_hash=sr.cfg.hash(), fold=sr.fold, provenance=data.note)
        out.append((res, pred, hist.assign(model=sr.run_id, seed=sr.seed)))
    return out


def run_cross_validation(data: StageData, plan: Plan, *, device: str = "cpu", seed: int = 0,
                         progress: bool = True) -> RunResults:
    """Train ``plan.cross_validation`` once per fold (run id ``cv.<config>``, the ``fold`` column set).

    Fold f is the test side, fold f+1 the validation side (``splits.fold_split``). Empty when the
    plan has no cross-validation or the protein table no ``fold`` column.
    """
    if not plan.cross_validation or "fold" not in data.proteins.columns:
        return RunResults()
    name = plan.cross_validation
    cv_cfg, run_id = plan.configs[name], runs.make_id("cv", name)
    folds = range(int(data.proteins["fold"].max()) + 1)
    scored = _train_and_score(data, [_SplitRun(proteins=data.proteins.assign(split=splits.fold_split(data.proteins["fold"], f)),
                                               cfg=cv_cfg, run_id=run_id, config=name, seed=seed, fold=f) for f in folds],
                              device=device, progress=progress)
    return _collect([res for res, _, _ in scored], [pred.assign(fold=f) for f, (_, pred, _) in zip(folds, scored)],
                    [hist.assign(fold=f) for f, (_, _, hist) in zip(folds, scored)])


def run_attention_mil(data: StageData, fusion: RunResults, *, device: str = "cpu", seed: int = 0,
                      of: str = runs.FUSION_CORRECTED) -> RunResults:
    """Attention over all images of a protein (``mil``) on the frozen pooled image
    representations of run ``of`` (first seed); run id ``fusion.corrected_mil``, protein level only."""
    from . import mil

    if of not in fusion.models:
        return RunResults()
    model, _, tcfg = fusion.models[of]
    ds = fusion.datasets
    bag_sets = {s: mil.bags(ds[s].samples, mil.image_features(model, ds[s], device, pad_to=_pad_to(tcfg, ds[s], ds)),
                            data.labels) for s in SPLITS}
    mil_model = mil.fit_mil(bag_sets["train"], bag_sets["val"], len(data.labels), seed=seed)
    bag_probs = {s: mil.predict_bags(mil_model, bag_sets[s]) for s in ("val", "test")}
    bag_rows = {s: data.proteins.set_index("protein_id").loc[bag_sets[s][0]].reset_index() for s in ("val", "test")}
    run_id = f"{of}_mil"
    first_seed = int(fusion.metrics.loc[fusion.metrics["model"] == of, "seed"].min())
    res, _, pred = evaluation.evaluate(run_id, data.labels, data.proteins, (bag_rows["val"], bag_probs["val"]),
                                       (bag_rows["test"], bag_probs["test"]), seed=first_seed, tune=True,
                                       config=runs.parse(of)[1], config_hash=tcfg.hash(), image_level=False, provenance=data.note)
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
                            progress: bool = True) -> RunResults:
    """``control.permuted_labels``: ``plan.control`` trained, selected (early stopping) and
    thresholded on permuted training and validation labels, scored on the true test labels.

    Nothing it is fitted or chosen on carries the true labels, so it must land at chance;
    otherwise something leaks. (Selecting on the true validation labels is not enough: where
    images follow the labels, as in the demo, the choice of epoch and thresholds on true
    validation labels alone lifts a model trained on noise above chance.)"""
    if not plan.control:
        return RunResults()
    tcfg = plan.configs[plan.control]
    seeds = plan.seeds if seed is None else [seed]
    # one run per training seed, each with its own permutation: a single noise-trained run can sit
    # above its shuffle null by chance (its scores cluster by image class); several show whether it does so
    # systematically (evaluation.permutation_control)
    true_test = fusion_datasets(data, targets=data.eval_targets)["test"]   # test: the true labels
    permuted = {s: permute_labels(data.proteins, data.labels, seed=s) for s in seeds}
    sets = {s: {**fusion_datasets(data, targets="protein", proteins=permuted[s]), "test": true_test}  # train, val: permuted
            for s in seeds}
    trained = training.train_jobs([_job(sets[s], tcfg, seed=s) for s in seeds], data.labels, device=device,
                                  progress=progress)
    metrics, preds, hists = [], [], []
    for s, (model, hist) in zip(seeds, trained):
        ds = sets[s]
        probs = _predict(model, ds, tcfg, device)
        res, _, pred = evaluation.evaluate(PERMUTED_CONTROL, data.labels, permuted[s], (ds["val"].samples, probs["val"]),
                                           (ds["test"].samples, probs["test"]), seed=s,
                                           tune=tcfg.thresholds == "tuned", config=plan.control,
                                           config_hash=tcfg.hash(), provenance=data.note)
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
                 progress: bool = True) -> RunResults:
    """Variance over re-splits: ``plan.resplits['config']`` retrained on ``repeats`` fresh splits of
    each protocol in ``methods``; run id ``resplit.<method>``, the repeat r in ``seed`` (split seed
    = training seed = r)."""
    if not plan.resplits:
        return RunResults()
    tcfg = plan.configs[plan.resplits["config"]]
    scored = _train_and_score(data, [
        _SplitRun(proteins=data.proteins.assign(split=resplit(data, method, seed=r, split_cfg=split_cfg).to_numpy()),
                  cfg=tcfg, run_id=runs.make_id("resplit", method), config=plan.resplits["config"], seed=r)
        for method in plan.resplits["methods"] for r in range(plan.resplits["repeats"])],
        device=device, progress=progress)
    return _collect([res for res, _, _ in scored], [pred for _, pred, _ in scored], [hist for _, _, hist in scored])


def run_training_stage(cfg: dict, *, profile: str, data_root=None, device: str = "cpu", seed: int = 0,
                       progress: bool = True, resume_root: str | Path | None = None) -> RunResults:
    """Notebook 03 in one call: every fusion run of the plan, cross-validation, attention MIL, the
    permutation control and the re-splits. Returns the combined ``RunResults``."""
    data = load_stage_data(profile, data_root=data_root)
    plan = plan_runs(cfg)
    fusion = run_fusion_plan(data, plan, device=device, progress=progress, resume_root=resume_root)
    return combine(fusion,
                   run_cross_validation(data, plan, device=device, seed=seed, progress=progress),
                   run_attention_mil(data, fusion, device=device, seed=seed),
                   run_permutation_control(data, plan, device=device, progress=progress),
                   run_resplits(data, plan, cfg["data"].get("split", {}), device=device, progress=progress))


# ---------------------------------------------------------------------------------------------
# checkpoints and outputs

def make_checkpoint(model, *, run_id: str, thresholds: dict, train_cfg: training.TrainConfig, cfg: dict,
                    data: StageData) -> Checkpoint:
    """The typed checkpoint of one trained run (protein-level thresholds, encoders and store fingerprints)."""
    emb = cfg["embeddings"]
    return Checkpoint(model=model, run_id=run_id, labels=list(data.labels), label_map=data.data_manifest["label_map"],
                      thresholds=list(thresholds["protein"]), training=training.train_config_dict(train_cfg),
                      config_hash=train_cfg.hash(),
                      encoders={"sequence": emb["sequence"], "image": emb["image"],
                                "max_residues": emb["max_residues"], "long_policy": emb["long_policy"],
                                "crop_grid": int(emb.get("crop_grid", 1)),
                                "jpeg_draft": bool(data.emb_manifest["image_store"].get("extraction", {})
                                                   .get("jpeg_draft"))},
                      sequence_encoder=data.emb_manifest["sequence_store"]["fingerprint"],
                      image_encoder=data.emb_manifest["image_store"]["fingerprint"],
                      provenance=cfg.get("provenance", {}))


CHECKPOINT_RUNS = (runs.FUSION_CORRECTED, runs.FUSION_AUTHORS)


def checkpoint_dir_name(run_id: str) -> str:
    """``fusion.corrected`` -> ``checkpoint-corrected`` (what ``predict --checkpoint`` is given)."""
    return f"checkpoint-{runs.parse(run_id)[1]}"


def write_training_outputs(results: RunResults, out_dir: str | Path, *, cfg: dict, data: StageData,
                           params: dict, checkpoint_runs=CHECKPOINT_RUNS) -> Path:
    """Stage 03's folder, swapped into place whole: ``metrics.csv`` (tidy, + git commit),
    ``history.csv``, ``predictions.parquet``, ``checkpoint-<name>/`` per run of ``checkpoint_runs``
    that was trained (``Checkpoint.save``), ``manifest.json``."""
    with manifest.stage_output(out_dir, "03_training", params, data.inputs(), provenance=cfg["provenance"]) as (tmp, extra):
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
    return Path(out_dir)


def training_params(plan: Plan, *, profile: str, seed: int, device: str) -> dict:
    """Stage 03's manifest parameters: the profile, seed, device and every run with its switches."""
    return {"profile": profile, "seed": seed, "device": device,
            "plan": [{"run_id": r["run_id"], "seed": r["seed"], "config_hash": r["train"].hash(),
                      **({"image_variant": r["image_variant"]} if "image_variant" in r else {}),
                      **training.train_config_dict(r["train"])} for r in plan.runs],
            "cross_validation": plan.cross_validation, "control": plan.control, "resplits": plan.resplits}


def clear_resume(resume_root: str | Path) -> None:
    """Drop the per-epoch resume states once the stage output is written."""
    shutil.rmtree(resume_root, ignore_errors=True)


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
        res, _, pred = evaluation.evaluate(run_id, self.data.labels, self.data.proteins, (tables["val"], val_probs),
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
    P, I, labels = rec.P, rec.I, data.labels
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
    Xi = {s: np.stack([t.numpy() for t in data.img_store.get_many(I[s]["image_id"], pooled=True)]) for s in SPLITS}
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
    Xe = {s: np.hstack([Xi[s], np.stack([pooled[hash_of[p]].numpy() for p in I[s]["protein_id"]])]) for s in SPLITS}
    predict = baselines.fit_mlp(Xe["train"], Yi["train"], Xe["val"], Yi["val"], **mlp)
    rec.record("baseline.early_fusion", predict(Xe["val"]), predict(Xe["test"]), on="images")
    return _collect(rec.metrics, rec.predictions, [])


def write_baseline_outputs(results: RunResults, out_dir: str | Path, *, cfg: dict, data: StageData,
                           params: dict) -> Path:
    """Stage 04's folder, swapped into place whole: ``metrics.csv``, ``predictions.parquet``, manifest."""
    with manifest.stage_output(out_dir, "04_baselines", params, data.inputs(), provenance=cfg["provenance"]) as (tmp, extra):
        results.metrics.assign(git_commit=manifest.git_commit()).to_csv(tmp / "metrics.csv", index=False)
        results.predictions.to_parquet(tmp / "predictions.parquet", index=False)
        extra["runs"] = sorted(set(results.metrics["model"]))
    return Path(out_dir)
