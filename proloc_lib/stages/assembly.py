"""Notebook 01's driver: the protein and image tables every later stage reads.

Demo profiles: real SCL2205 sequences with synthetic images drawn from each protein's labels;
the full profile: the Vislocas/HPA tables joined to UniProt sequences (``data.build``). Then the
protein-disjoint split, the audit of the authors' published tables, and the stage's outputs
(``proteins.parquet``, ``images.parquet``, ``report.json``, the data card) with a manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from proloc_lib.core import paths
from proloc_lib.core.provenance import provenance_note
from proloc_lib.core.runtime import seed_everything
from proloc_lib.data import build, datacard, demo, splits
from proloc_lib.data.audit import audit, format_audit
from proloc_lib.data.labels import LabelMap
from proloc_lib.evaluation import figures
from proloc_lib.stages.common import Stage
from proloc_lib.stages.embeddings import image_embedder
from proloc_lib.training.settings import TrainConfig

HPA_MAPPING = "data/mappings/hpa_to_proloc5.yaml"   # the audit reads the authors' HPA tables with it


def truth_name(data_cfg: dict) -> str:
    """What the image table's labels are, as results name them (``truth`` in metrics.csv)."""
    if data_cfg["source"] != "hpa":
        return "demo_labels"
    return "benchmark_columns" if data_cfg.get("labels", "columns") == "columns" else "location_mapping"


def training_sets(proteins: pd.DataFrame, images: pd.DataFrame, configs: dict[str, TrainConfig]) -> pd.DataFrame:
    """One row per training configuration: the splits it trains on (``train_on``), its proteins,
    distinct images and image rows, and the validation part it holds out (if any)."""
    rows = []
    val = proteins["split"] == "val"
    for name, cfg in configs.items():
        parts = cfg.training_splits
        prot = proteins["split"].isin(parts)
        img = images[images["split"].isin(parts)]
        held = ("none (trains on the validation proteins; their loss is only reported)" if "val" in parts else
                f"{int(val.sum())} proteins, {images.loc[images['split'] == 'val', 'image_id'].nunique()} images")
        rows.append({"configuration": name, "train_on": cfg.train_on, "proteins": int(prot.sum()),
                     "images": int(img["image_id"].nunique()), "image rows": int(len(img)),
                     "benchmark files": ", ".join(sorted(set(proteins.loc[prot, "benchmark_split"])))
                     if "benchmark_split" in proteins.columns else "—", "validation held out": held})
    return pd.DataFrame(rows)


class AssemblyStage(Stage):
    """Notebook 01: ``header``, ``build``, ``examples_figure``, ``split``, ``audit_reference``, ``write``."""
    name = "01_data_assembly"

    def __init__(self, profile, *, seed: int = 0, device: str = "auto", data_root=None, mirror: str | None = None):
        self.mirror = mirror
        super().__init__(profile, seed=seed, device=device, data_root=data_root)

    def open(self) -> None:
        seed_everything(self.seed)
        self.label_map = LabelMap.load(paths.project_path(self.cfg["data"]["label_map"]))
        self.labels = self.label_map.labels
        self.note = provenance_note(self.cfg)
        self.proteins = self.images = self.report = self.split_report = self.training_sets = None

    @classmethod
    def parameters_for(cls, cfg, *, seed: int, device: str, data_root=None, mirror: str | None = None) -> dict:
        return {"profile": cfg.name, "seed": seed, "data": cfg["data"],
                "label_map": LabelMap.load(paths.project_path(cfg["data"]["label_map"])).id,
                "mirror": mirror or cfg["data"].get("mirror")}

    def options(self) -> dict:
        return {"mirror": self.mirror}

    def header(self) -> str:
        return (f"**Profile `{self.profile}`**: {self.cfg['description']}  \n**Provenance:** {self.note}  \n"
                f"**Label mapping:** `{self.label_map.id}` -> {self.labels}")

    def build(self) -> pd.DataFrame:
        """The protein and image tables (demo: SCL2205 + synthetic images; full: Vislocas + UniProt +
        HPA images, stopping at once when a source is unreachable). Returns the first proteins."""
        data = self.cfg["data"]
        if data["source"] == "scldata":
            self.proteins, self.report = demo.select_proteins(
                demo.load_scldata(), self.label_map, n_proteins=data["n_proteins"], seed=self.seed,
                min_length=data["min_length"], max_length=data["max_length"])
            self.images = demo.make_demo_images(self.proteins, self.labels, self.profile_dir / "images",
                                                data["images_per_protein"], self.seed, size=data["image_size"])
        else:
            embed = None
            if data.get("stream"):  # small disk: embed each image as it arrives, keep a thumbnail
                self.hold(self.stage_dir("02_embeddings"), shared=True)   # a writer of its stores, as extract is
                embed = image_embedder(self.cfg, self.stage_dir("02_embeddings"), self.device)
            self.proteins, self.images, self.report = build.assemble(data, self.label_map, self.profile_dir,
                                                                     embed=embed, mirror=self.mirror)
            # a mirror with synthetic images / stand-in sequences marks everything made from this build
            self.cfg["provenance"] = build.build_provenance(self.cfg["provenance"], self.report)
            self.note = provenance_note(self.cfg)
        return self.proteins.head()

    def report_text(self, limit: int = 3000) -> str:
        """The start of the build report (the whole is in report.json and the data card)."""
        return json.dumps(self.report, indent=1, default=str)[:limit]

    def examples_figure(self):
        """One image per protein for the first proteins, read through the validated loader."""
        return figures.image_examples(self.images, self.proteins, self.labels, self.profile_dir,
                                      synthetic=bool(self.cfg["provenance"].get("synthetic_images")))

    def split(self) -> pd.DataFrame:
        """The profile's protein-disjoint split (and grouped folds when asked); proteins per label and split."""
        split_cfg = self.cfg["data"]["split"]
        self.proteins["split"], self.split_report = splits.split_proteins(self.proteins, self.images, self.labels,
                                                                          split_cfg, self.seed)
        self.report["split"] = self.split_report
        if split_cfg.get("folds"):   # optional grouped k-fold assignment, for cross-validation
            self.proteins["fold"] = splits.assign_folds(self.proteins, self.labels, split_cfg["folds"], self.seed,
                                                        self.images)
        splits.check_disjoint(self.proteins, self.images)
        if "benchmark_split" in self.images.columns:   # the benchmark file each protein comes from
            self.proteins["benchmark_split"] = self.proteins["protein_id"].map(
                self.images.groupby("protein_id")["benchmark_split"].first())
        self.images = self.images.merge(self.proteins[["protein_id", "split"]], on="protein_id",
                                        validate="many_to_one")
        self.training_sets = training_sets(self.proteins, self.images, self.cfg.plan.configs)
        self.report["training_sets"] = self.training_sets.to_dict(orient="records")
        # how close the test proteins are to what the models learn from (the paper's test set included)
        self.report["test_train_homology"] = splits.nearest_training_homologs(
            self.proteins, identity=float(split_cfg.get("identity") or splits.DEFAULT_IDENTITY))
        return datacard.label_split_counts(self.proteins, self.labels)

    def audit_reference(self, reference_dir=None) -> str:
        """The audit of the authors' published tables (``paths.reference_dir()`` by default)."""
        ref = paths.reference_dir(reference_dir)
        files = sorted(ref.glob("*.csv")) if ref.exists() else []
        if not files:
            return f"No reference files at {ref}; skipping the audit."
        return format_audit(audit(files, LabelMap.load(paths.project_path(HPA_MAPPING))))

    def write(self) -> str:
        """The stage's folder, swapped into place whole with its manifest; returns the data card."""
        with self.publishing() as (tmp, extra):
            self.proteins.to_parquet(tmp / "proteins.parquet", index=False)
            self.images.to_parquet(tmp / "images.parquet", index=False)
            (tmp / "report.json").write_text(json.dumps(self.report, indent=2, default=str))
            card = datacard.data_card(self.proteins, self.images, self.labels, self.report, self.note,
                                      split_report=self.split_report, training_sets=self.training_sets)
            (tmp / "data_card.md").write_text(card + "\n![data card](data_card.png)\n")
            figures.set_style()
            figures.save(figures.data_card_figure(self.proteins, self.images, self.labels), tmp, "data_card",
                         f"Profile '{self.profile}'. {self.note}")
            extra.update({"labels": self.labels, "label_map": self.label_map.id, "n_proteins": len(self.proteins),
                          "n_images": len(self.images), "truth": truth_name(self.cfg["data"])})
        self.release()
        return card

    def run(self, *, reference_dir=None) -> Path:
        self.build()
        self.split()
        self.audit_reference(reference_dir)
        self.write()
        return self.out_dir
