"""What the stages share: the ``Stage`` every notebook driver builds on (profile, seed, device,
folders), stage 01 and 02 outputs opened once (``StageData``), the provenance later stages show,
and run results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from proloc_lib.core import manifest, paths, provenance, runs
from proloc_lib.core.errors import UserError
from proloc_lib.core.manifest import MANIFEST
from proloc_lib.core.runtime import resolve_device
from proloc_lib.evaluation import tables
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.profiles.loader import Profile, load_profile


def stage_provenance(cfg: dict, data_root=None) -> dict:
    """The provenance later stages should show: the profile's, corrected by what stage 01 built.

    Stage 01 records in its manifest whether its data came from a mirror with synthetic images
    or stand-in sequences (``hpa.build_provenance``); the profile alone cannot know that.
    """
    path = paths.stage_dir(cfg["profile"], "01_data_assembly", data_root) / MANIFEST
    prov = dict(cfg.get("provenance", {}))
    if path.is_file():
        try:
            prov.update(json.loads(path.read_text()).get("provenance") or {})
        except ValueError:
            pass  # a broken manifest is stage 01's problem; the profile's provenance stands
    return prov


def stage_note(cfg: dict, data_root=None) -> str:
    """The provenance note of ``stage_provenance``: what later stages' tables and figures say."""
    return provenance.provenance_note(stage_provenance(cfg, data_root))


SPLITS = ("train", "val", "test")


class Stage:
    """One notebook's driver: the checked profile, the seed, the device and the stage's folder.

    A notebook makes one (``stage = TrainingStage(profile, seed=seed, device=device,
    data_root=data_root)``), then calls its methods section by section and shows what they
    return; ``run()`` calls the same methods in the same order without a notebook.
    """
    name: str = ""          # the stage folder: "01_data_assembly", ...

    def __init__(self, profile: str | Profile, *, seed: int = 0, device: str = "auto", data_root=None):
        self.cfg = profile if isinstance(profile, Profile) else load_profile(profile)
        self.profile = str(profile) if not isinstance(profile, Profile) else profile.name
        self.seed, self.data_root, self._device, self._resolved = int(seed), data_root, device, None
        self.out_dir = paths.stage_dir(self.profile, self.name, data_root)
        self.profile_dir = paths.data_root(data_root) / self.profile

    @property
    def device(self) -> str:
        """The device the profile runs on ("auto": CUDA when available), checked once."""
        if self._resolved is None:
            self._resolved = resolve_device(self._device)
        return self._resolved

    def stage_dir(self, stage: str):
        """Another stage's folder for this profile and data root."""
        return paths.stage_dir(self.profile, stage, self.data_root)

    def run(self):
        """Every section of the notebook, in order, without the notebook."""
        raise NotImplementedError


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


def load_stage_data(profile: str, *, data_root=None) -> StageData:
    """Open stage 01's tables and stage 02's stores (manifests checked: both stages complete)."""
    data_dir = paths.stage_dir(profile, "01_data_assembly", data_root)
    emb_dir = paths.stage_dir(profile, "02_embeddings", data_root)
    data_man, emb_man = manifest.read_manifest(data_dir), manifest.read_manifest(emb_dir)
    return StageData(labels=list(data_man["labels"]), proteins=pd.read_parquet(data_dir / "proteins.parquet"),
                     images=pd.read_parquet(data_dir / "images.parquet"),
                     seq_store=EmbeddingStore(emb_dir / "sequences"), img_store=EmbeddingStore(emb_dir / "images"),
                     data_dir=data_dir, emb_dir=emb_dir, data_manifest=data_man, emb_manifest=emb_man,
                     note=provenance.provenance_note(data_man.get("provenance") or {}))


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
        return tables.paper_table(sel, level=level)

    def summary(self, *, level: str = "protein", kinds=None) -> pd.DataFrame:
        """'mean ± sd' over seeds (or folds, or re-splits) per run."""
        sel = self._select(kinds)
        if sel.empty:
            return pd.DataFrame()
        return tables.summary_table(sel, level=level)


def _collect(metrics: list, preds: list, hists: list, models=None, datasets=None) -> RunResults:
    def cat(fs):
        return pd.concat(fs, ignore_index=True) if fs else pd.DataFrame()
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
