"""Notebook 02's driver: each unique sequence and each image embedded once into the feature stores.

``EmbeddingsStage`` is the notebook's sections; ``embed_sequence_stage``, ``embed_image_stage`` and
``image_embedder`` are also used by ``proloc extract`` (sharded runs) and by stage 01's streaming
mode (images embedded as they arrive).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from proloc_lib.core import manifest
from proloc_lib.core.fileio import write_text
from proloc_lib.core.runtime import seed_everything
from proloc_lib.features.encoders import load_image_encoder, load_sequence_encoder
from proloc_lib.features.image import extract_images
from proloc_lib.features.sequence import extract_sequences
from proloc_lib.features.store import check_complete, store_checksums, store_size_bytes
from proloc_lib.features.variants import image_store_dir, image_variants
from proloc_lib.stages.common import STAGE_TABLES, Stage, stage_note


def embed_sequence_stage(cfg: dict, proteins, out_dir: str | Path, device: str, shard: str | None = None,
                         on_stale: str = "recompute", progress: bool = True, *, verify: str = "full") -> dict:
    ecfg = cfg["embeddings"]
    encoder = load_sequence_encoder(ecfg["sequence"], device=device)
    unique = dict(zip(proteins["seq_hash"], proteins["sequence"]))
    return extract_sequences(unique, encoder, Path(out_dir) / "sequences", token_budget=ecfg["token_budget"],
                             max_residues=ecfg["max_residues"], long_policy=ecfg["long_policy"],
                             shard_size=ecfg["shard_size"], shard=shard, on_stale=on_stale, progress=progress,
                             verify=verify)


def image_embedder(cfg: dict, out_dir: str | Path, device: str, shard: str | None = None,
                   on_stale: str = "recompute", progress: bool = True, *, variants: bool = True):
    """``embed({image checksum: path}) -> report`` into the stage's image store and, with
    ``variants``, each ``embeddings.image_variants`` store (also used by the data stage's
    streaming mode, which embeds images as they arrive). The report is the main store's, with
    ``report["variants"][name]`` for each variant. Each store is verified in full on the first
    call, quickly (changed shards only) after that."""
    sections = image_variants(cfg) if variants else {None: cfg["embeddings"]}
    encoders: dict = {}
    calls = {"n": 0}

    def embed(paths: dict) -> dict:
        reports = {}
        for name, ecfg in sections.items():
            if name not in encoders:
                encoders[name] = load_image_encoder(ecfg["image"], device=device)
            reports[name] = extract_images(
                paths, encoders[name], image_store_dir(out_dir, name), batch_size=ecfg["image_batch_size"],
                shard_size=ecfg["shard_size"], shard=shard, on_stale=on_stale, progress=progress,
                grid=ecfg.get("crop_grid", 1), jpeg_draft=ecfg.get("jpeg_draft", True),
                workers=ecfg.get("decode_workers", "auto"), autocast=ecfg.get("image_autocast", True),
                verify="full" if calls["n"] == 0 else "quick")
        calls["n"] += 1
        report = reports.pop(None)
        if reports:
            report["variants"] = reports
        return report
    return embed


def embed_image_stage(cfg: dict, images, profile_dir: str | Path, out_dir: str | Path, device: str,
                      shard: str | None = None, on_stale: str = "recompute", progress: bool = True, *,
                      variants: bool = True) -> dict:
    paths = {row.image_id: Path(profile_dir) / row.path for row in images.itertuples()}
    return image_embedder(cfg, out_dir, device, shard, on_stale, progress, variants=variants)(paths)


class EmbeddingsStage(Stage):
    """Notebook 02: ``header``, ``embed_sequences``, ``embed_images``, ``verify``, ``write``.

    ``shard`` ("i/N"): embed only this deterministic share (several GPUs or machines; merge after).
    ``on_stale``: a store made by another model or preprocessing is "recompute"d, or an "error".
    """
    name = "02_embeddings"

    reads = {"01_data_assembly": STAGE_TABLES}

    def __init__(self, profile, *, seed: int = 0, device: str = "auto", data_root=None, shard: str | None = None,
                 on_stale: str = "recompute"):
        self.shard, self.on_stale = shard, on_stale
        super().__init__(profile, seed=seed, device=device, data_root=data_root)

    def open(self) -> None:
        seed_everything(self.seed)
        self.device  # checked before any work
        self.in_dir = self.stage_dir("01_data_assembly")
        self.proteins = pd.read_parquet(self.in_dir / "proteins.parquet")
        self.images = pd.read_parquet(self.in_dir / "images.parquet")
        (self.out_dir / manifest.MANIFEST).unlink(missing_ok=True)  # incomplete until this run finishes
        self.seq_report = self.img_report = None
        self.seq_store = self.img_stores = None

    @classmethod
    def parameters_for(cls, cfg, *, seed: int, device: str, data_root=None, shard: str | None = None) -> dict:
        return {"profile": cfg.name, "seed": seed, "device": device, "shard": shard, "embeddings": cfg["embeddings"]}

    def options(self) -> dict:
        return {"shard": self.shard}

    def header(self) -> str:
        return (f"**Profile `{self.profile}`** on `{self.device}`. "
                f"{stage_note(self.cfg, self.data_root, seed=self.seed)}  \n"
                f"{len(self.proteins)} proteins, {self.proteins['seq_hash'].nunique()} unique sequences, "
                f"{len(self.images)} images.")

    def embed_sequences(self) -> dict:
        """Every unique sequence not yet stored; repaired shards are listed. Returns the report (counts)."""
        self.seq_report = embed_sequence_stage(self.cfg, self.proteins, self.out_dir, self.device, shard=self.shard,
                                               on_stale=self.on_stale)
        _print_repairs("sequences", self.seq_report)
        return {k: v for k, v in self.seq_report.items() if k not in ("failures", "repaired")} | {
            "failures": len(self.seq_report["failures"])}

    def embed_images(self) -> pd.DataFrame:
        """Every image not yet stored, in every image store of the profile; one row per store."""
        self.img_report = embed_image_stage(self.cfg, self.images, self.profile_dir, self.out_dir, self.device,
                                            shard=self.shard, on_stale=self.on_stale)
        rows = []
        for name, rep in [(None, self.img_report), *self.img_report.get("variants", {}).items()]:
            store = image_store_dir(self.out_dir, name).name
            _print_repairs(store, rep)
            rows.append({"store": store, "embedded now": rep["embedded"], "failures": len(rep["failures"]),
                         "decode threads": rep["decode_workers"], "JPEG draft": rep["jpeg_draft"],
                         "autocast": rep["autocast"]})
        return pd.DataFrame(rows)

    def verify(self) -> pd.DataFrame:
        """Every store verified in full (each shard's checksum) and complete (every sequence of
        proteins.parquet, every image of images.parquet), or this stops and no manifest is written."""
        self.seq_store = check_complete(self.out_dir / "sequences", self.proteins["seq_hash"], what="sequence")
        self.img_stores = {name or "images": check_complete(image_store_dir(self.out_dir, name),
                                                            self.images["image_id"], what=f"image ({name or 'main'})")
                           for name in image_variants(self.cfg)}
        rows = [("sequences", self.seq_store)] + [(n if n == "images" else f"images-{n}", s)
                                                  for n, s in self.img_stores.items()]
        return pd.DataFrame([
            {"store": name, "items": len(st), "MB": store_size_bytes(st.path) / 1e6, "failures": len(st.failures()),
             "model": st.meta["fingerprint"]["model_id"],
             "random weights": st.meta["fingerprint"].get("random_weights")}
            for name, st in rows])

    def shapes(self) -> str:
        """What one stored sequence and one stored image look like."""
        example = self.seq_store.get(self.proteins["seq_hash"].iloc[0])
        image = self.img_stores["images"].get(self.images["image_id"].iloc[0])
        return (f"first protein: {len(self.proteins['sequence'].iloc[0])} residues -> {tuple(example.shape)} "
                f"{example.dtype}\nfirst image -> {tuple(image.shape)} tokens x hidden")

    def write(self) -> Path:
        """The manifest, written last: the stores are complete and verified."""
        self.lock.acquire()
        self.lock.check_owned()
        params = self.parameters()
        inputs = [self.in_dir / "proteins.parquet", self.in_dir / "images.parquet"]
        img_store = self.img_stores["images"]
        man = manifest.build_manifest(self.name, params, inputs, provenance=self.cfg["provenance"], extra={
            "sequence_store": self.seq_store.meta, "image_store": img_store.meta,
            "image_variant_stores": {n: s.meta for n, s in self.img_stores.items() if n != "images"},
            "sequence_report": self.seq_report, "image_report": self.img_report, **self.record(params)},
            outputs=store_checksums(self.out_dir))
        write_text(self.out_dir / manifest.MANIFEST, json.dumps(man, indent=2, default=str))
        self.release()
        return self.out_dir / manifest.MANIFEST

    def run(self) -> Path:
        self.embed_sequences()
        self.embed_images()
        self.verify()
        return self.write()


def _print_repairs(store: str, report: dict) -> None:
    """A missing, truncated or corrupted shard was set aside and its items embedded again: say so."""
    for p in report.get("repaired", []):
        print(f"{store}: repaired {p['shard']} - {p['problem']}")
